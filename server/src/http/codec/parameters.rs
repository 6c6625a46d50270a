//! `parameters` objects: scalar values only, refused at the first `[` or `{`, so a request cannot make
//! the server build more than its own bytes.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{MAX_PARAMETERS, Parameters};

/// `"parameters": {...}` or `null`, with scalar values only.
pub(super) struct OptionalParameters;

impl<'de> DeserializeSeed<'de> for OptionalParameters {
    type Value = Option<Parameters>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        scalar_parameters(d)
    }
}

/// A `parameters` object: at most [`MAX_PARAMETERS`] entries, each a bool, number or string. An array or
/// object value is refused at its first `[` or `{`, before anything of it is built.
pub fn scalar_parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Parameters>, D::Error> {
    struct Params;
    impl<'de> Visitor<'de> for Params {
        type Value = Option<Parameters>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a parameters object")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut params = Parameters::new();
            while let Some(key) = map.next_key::<String>()? {
                if params.len() == MAX_PARAMETERS && !params.contains_key(&key) {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_PARAMETERS} parameters"
                    )));
                }
                let value = map.next_value_seed(Scalar { key: &key })?;
                params.insert(key, value);
            }
            Ok(Some(params))
        }
    }
    d.deserialize_option(Params)
}

/// One parameter value: bool, number or string.
pub struct Scalar<'k> {
    /// The parameter's name, for the error.
    pub key: &'k str,
}

impl Scalar<'_> {
    fn refuse<E: de::Error>(&self, what: &str) -> E {
        E::custom(format_args!(
            "parameter '{}' must be a boolean, number or string, not {what}",
            self.key
        ))
    }
}

impl<'de> DeserializeSeed<'de> for Scalar<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, number or string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.refuse("a non-finite number"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(self.refuse("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.refuse("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.refuse("an object"))
    }
}

//! The request's JSON read field by field with serde seeds, so that each input is checked (by the
//! parent's [`Checks`]) as soon as it is read, and a refusal stops the parse there.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::parameters::OptionalParameters;
use super::{Checks, InputJson, OutputJson, Parameters};
use crate::error::Error;
use crate::tensor::MAX_DIMS;

/// The request's top level, read field by field so that each input is checked as soon as it is read.
pub(super) struct RequestSeed<'c, 'a, 's> {
    pub(super) checks: &'c mut Checks<'a, 's>,
}

/// What the top level holds besides the inputs and outputs (which go to [`Checks`]).
pub(super) struct RequestHead {
    pub(super) id: Option<String>,
    pub(super) parameters: Option<Parameters>,
    /// Whether `outputs` was given (not null).
    pub(super) outputs: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

impl<'de, 's> DeserializeSeed<'de> for RequestSeed<'_, 'de, 's> {
    type Value = RequestHead;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for RequestSeed<'_, 'de, 's> {
    type Value = RequestHead;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestHead, A::Error> {
        let mut id: Option<Option<String>> = None;
        let mut parameters: Option<Option<Parameters>> = None;
        let mut inputs = false;
        let mut outputs: Option<bool> = None;
        let duplicate = |name| de::Error::custom(format_args!("duplicate field `{name}`"));
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Id if id.is_some() => return Err(duplicate("id")),
                Field::Id => id = Some(map.next_value()?),
                Field::Parameters if parameters.is_some() => return Err(duplicate("parameters")),
                Field::Parameters => {
                    parameters = Some(map.next_value_seed(OptionalParameters)?);
                }
                Field::Inputs if inputs => return Err(duplicate("inputs")),
                Field::Inputs => {
                    map.next_value_seed(InputsSeed {
                        checks: &mut *self.checks,
                    })?;
                    inputs = true;
                }
                Field::Outputs if outputs.is_some() => return Err(duplicate("outputs")),
                Field::Outputs => {
                    outputs = Some(map.next_value_seed(OutputsSeed {
                        checks: &mut *self.checks,
                    })?);
                }
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if !inputs {
            return Err(de::Error::missing_field("inputs"));
        }
        Ok(RequestHead {
            id: id.flatten(),
            parameters: parameters.flatten(),
            outputs: outputs.unwrap_or(false),
        })
    }
}

/// Stops the parse with `refusal` as the request's answer.
fn refuse<E: de::Error>(checks: &mut Checks, refusal: Error) -> E {
    let shown = refusal.to_string();
    checks.refusal = Some(refusal);
    E::custom(shown)
}

struct InputsSeed<'c, 'a, 's> {
    checks: &'c mut Checks<'a, 's>,
}

impl<'de, 's> DeserializeSeed<'de> for InputsSeed<'_, 'de, 's> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 's> Visitor<'de> for InputsSeed<'_, 'de, 's> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of input tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(input) = seq.next_element::<InputJson<'de>>()? {
            let data = match input.data {
                None => None,
                // Not an index where one was put: the request is read again whole (this cannot happen
                // unless the walk and serde_json disagree on the document).
                Some(raw) => Some(
                    self.checks
                        .data
                        .text(raw)
                        .ok_or_else(|| de::Error::custom("data not found"))?,
                ),
            };
            if let Err(e) = self.checks.input(input, data) {
                return Err(refuse(self.checks, e));
            }
        }
        Ok(())
    }
}

struct OutputsSeed<'c, 'a, 's> {
    checks: &'c mut Checks<'a, 's>,
}

impl<'de, 's> DeserializeSeed<'de> for OutputsSeed<'_, 'de, 's> {
    /// False for `null`.
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, 's> Visitor<'de> for OutputsSeed<'_, 'de, 's> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of requested outputs")
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(output) = seq.next_element::<OutputJson>()? {
            if let Err(e) = self.checks.output(output) {
                return Err(refuse(self.checks, e));
            }
        }
        Ok(true)
    }
}

/// A shape: at most [`MAX_DIMS`] integers, refused at the next one without growing further.
pub(super) fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    struct Shape;
    impl<'de> Visitor<'de> for Shape {
        type Value = Vec<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a shape: an array of at most {MAX_DIMS} integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i64>, A::Error> {
            let mut dims = Vec::new();
            while let Some(d) = seq.next_element::<i64>()? {
                if dims.len() == MAX_DIMS {
                    return Err(de::Error::custom(format_args!(
                        "shape has more than {MAX_DIMS} dimensions"
                    )));
                }
                dims.push(d);
            }
            Ok(dims)
        }
    }
    d.deserialize_seq(Shape)
}

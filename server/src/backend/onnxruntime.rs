//! ONNX Runtime through `ort`, loading `libonnxruntime.so` at run time (feature `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorRef};

use super::Backend;
use crate::error::{Error, Result};
use crate::model_toml::{ModelToml, OptimizationLevel};
use crate::signature::{Signature, TensorSpec};
use crate::stats::Phases;
use crate::tensor::{DataType, Tensor, TensorData};

/// The process-wide ONNX Runtime environment, or why it could not be created. ONNX Runtime allows one
/// environment per process, so this is global by nature.
static RUNTIME: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Loads the library once: `explicit` (--ort-library) if given, else `ORT_DYLIB_PATH`, else the
/// `onnxruntime` wheel inside a `.venv` in the working directory or above the executable.
/// Returns the path that loaded.
pub fn init(explicit: Option<&Path>) -> Result<PathBuf, String> {
    RUNTIME
        .get_or_init(|| {
            let path = match explicit {
                Some(p) => p.to_path_buf(),
                None => match std::env::var_os("ORT_DYLIB_PATH") {
                    Some(p) if !p.is_empty() => PathBuf::from(p),
                    _ => find_in_venv().ok_or_else(|| {
                        "no --ort-library, no ORT_DYLIB_PATH, and no .venv with the onnxruntime wheel".to_string()
                    })?,
                },
            };
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
            let env = ort::init_from(&path)
                .map_err(|e| format!("cannot load {}: {e}", path.display()))?
                .with_name("keel")
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((path, env))
        })
        .as_ref()
        .map(|(path, _)| path.clone())
        .map_err(Clone::clone)
}

/// Whether ONNX Runtime is usable; `Err` carries the reason it is not.
pub fn status() -> Result<(), String> {
    match RUNTIME.get() {
        Some(Ok(_)) => Ok(()),
        Some(Err(why)) => Err(why.clone()),
        None => Err("ONNX Runtime was not initialised".into()),
    }
}

fn find_in_venv() -> Option<PathBuf> {
    let mut roots = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.iter().find_map(|root| {
        let lib = root.join(".venv/lib");
        let mut pythons: Vec<_> = std::fs::read_dir(&lib)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        pythons.sort();
        pythons.iter().rev().find_map(|py| {
            let capi = py.join("site-packages/onnxruntime/capi");
            let mut libs: Vec<_> = std::fs::read_dir(&capi)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            libs.pop()
        })
    })
}

pub struct OrtBackend {
    session: Session,
    outputs: Vec<TensorSpec>,
}

impl OrtBackend {
    pub fn load(path: &Path, signature: &Signature, config: &ModelToml) -> Result<Self, String> {
        let env = match RUNTIME.get() {
            Some(Ok((_, env))) => env,
            _ => return Err(status().err().unwrap_or_default()),
        };
        let settings = &config.onnxruntime;
        let level = match settings
            .graph_optimization_level
            .unwrap_or(OptimizationLevel::All)
        {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        };
        let options = |e: ort::Error<_>| format!("ONNX Runtime session options: {e}");
        let session = Session::builder(env)
            .map_err(|e| format!("ONNX Runtime session: {e}"))?
            .with_optimization_level(level)
            .map_err(options)?
            .with_intra_threads(settings.intra_op_threads.unwrap_or(1))
            .map_err(options)?
            .with_inter_threads(settings.inter_op_threads.unwrap_or(1))
            .map_err(options)?
            .commit_from_file(path)
            .map_err(|e| format!("ONNX Runtime cannot load the model: {e}"))?;
        Ok(OrtBackend {
            session,
            outputs: signature.outputs.clone(),
        })
    }
}

impl Backend for OrtBackend {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Phases)> {
        let start = Instant::now();
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), to_value(t)?)))
            .collect::<Result<Vec<_>>>()?;
        let converted = Instant::now();
        let results = self
            .session
            .run(values)
            .map_err(|e| Error::Internal(format!("ONNX Runtime run failed: {e}")))?;
        let ran = Instant::now();
        let outputs = self
            .outputs
            .iter()
            .map(|spec| {
                let value = results.get(&spec.name).ok_or_else(|| {
                    Error::Internal(format!("ONNX Runtime returned no output '{}'", spec.name))
                })?;
                from_value(spec, value)
                    .map_err(|e| Error::Internal(format!("output '{}': {e}", spec.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let phases = Phases {
            input: converted - start,
            infer: ran - converted,
            output: ran.elapsed(),
        };
        Ok((outputs, phases))
    }
}

/// A view of `data` for ONNX Runtime: the run reads the request's own vector, no copy.
fn primitive<'t, T: PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    shape: &'t [usize],
    data: &'t [T],
) -> ort::Result<SessionInputValue<'t>> {
    Ok(SessionInputValue::from(
        TensorRef::from_array_view((shape, data))?.into_dyn(),
    ))
}

fn to_value(t: &Tensor) -> Result<SessionInputValue<'_>> {
    let shape = t.shape.as_slice();
    let value = match &t.data {
        TensorData::Bool(v) => primitive(shape, v),
        TensorData::Uint8(v) => primitive(shape, v),
        TensorData::Uint16(v) => primitive(shape, v),
        TensorData::Uint32(v) => primitive(shape, v),
        TensorData::Uint64(v) => primitive(shape, v),
        TensorData::Int8(v) => primitive(shape, v),
        TensorData::Int16(v) => primitive(shape, v),
        TensorData::Int32(v) => primitive(shape, v),
        TensorData::Int64(v) => primitive(shape, v),
        TensorData::Fp16(v) => primitive(shape, v),
        TensorData::Fp32(v) => primitive(shape, v),
        TensorData::Fp64(v) => primitive(shape, v),
        TensorData::Bytes(v) => {
            return string_tensor(&t.name, t.shape.clone(), v).map(SessionInputValue::from);
        }
    };
    value.map_err(|e| Error::Internal(format!("input '{}': {e}", t.name)))
}

/// A BYTES input as an ONNX Runtime string tensor, element by element by length (see [`strings`]), so
/// any bytes pass, NUL and non-UTF-8 included, as Triton passes them.
fn string_tensor(input: &str, shape: Vec<usize>, items: &[Vec<u8>]) -> Result<DynValue> {
    strings::tensor(shape, items).map_err(|e| Error::Internal(format!("input '{input}': {e}")))
}

/// String tensors through ONNX Runtime's C API by length. `ort`'s own helpers go through `CString` (no
/// NUL inside) and `String` (UTF-8 only); BYTES elements are arbitrary bytes. The only `unsafe` in the
/// crate: calls into ONNX Runtime's C API (FFI), each on a tensor this module owns or borrows.
#[allow(unsafe_code)]
mod strings {
    use ort::AsPointer;
    use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

    /// A string tensor of `shape` holding `items`, each copied into a buffer of exactly its length.
    pub fn tensor(shape: Vec<usize>, items: &[Vec<u8>]) -> ort::Result<DynValue> {
        let empty = vec![""; items.len()];
        let mut value = OrtTensor::from_string_array((shape, empty.as_slice()))?.into_dyn();
        let api = ort::api();
        for (index, item) in items.iter().enumerate() {
            let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
            // SAFETY: `value` is a string tensor of `items.len()` elements owned here; ONNX Runtime resizes
            // element `index` to `item.len()` bytes and hands back that element's buffer, which stays valid
            // until the element is resized again; exactly `item.len()` bytes are written into it.
            unsafe {
                ort::Error::result_from_status((api.GetResizedStringTensorElementBuffer)(
                    value.ptr_mut(),
                    index,
                    item.len(),
                    &mut buffer,
                ))?;
                if !item.is_empty() && !buffer.is_null() {
                    std::ptr::copy_nonoverlapping(item.as_ptr(), buffer.cast::<u8>(), item.len());
                }
            }
        }
        Ok(value)
    }

    /// The shape and elements of a string tensor, each read by its length.
    pub fn read(value: &DynValue) -> ort::Result<(Vec<usize>, Vec<Vec<u8>>)> {
        let shape: Vec<usize> = match value.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::String,
                shape,
                ..
            } => shape.iter().map(|&d| d.max(0) as usize).collect(),
            other => {
                return Err(ort::Error::new(format!(
                    "expected a string tensor, got {other}"
                )));
            }
        };
        let count: usize = shape.iter().product();
        let api = ort::api();
        let mut items = Vec::with_capacity(count);
        for index in 0..count {
            let mut len = 0usize;
            // SAFETY: `value` is a string tensor of `count` elements borrowed for this call; ONNX Runtime
            // writes the length of element `index` into `len`.
            unsafe {
                ort::Error::result_from_status((api.GetStringTensorElementLength)(
                    value.ptr(),
                    index,
                    &mut len,
                ))?;
            }
            let mut item = vec![0u8; len];
            // SAFETY: `item` has exactly `len` bytes, the element's length read above; ONNX Runtime copies
            // that element into it and writes nothing beyond `len`.
            unsafe {
                ort::Error::result_from_status((api.GetStringTensorElement)(
                    value.ptr(),
                    len,
                    index,
                    item.as_mut_ptr().cast(),
                ))?;
            }
            items.push(item);
        }
        Ok((shape, items))
    }
}

fn extract<T: PrimitiveTensorElementType + Clone>(
    value: &DynValue,
) -> ort::Result<(Vec<usize>, Vec<T>)> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    Ok((shape.iter().map(|d| *d as usize).collect(), data.to_vec()))
}

fn from_value(spec: &TensorSpec, value: &DynValue) -> ort::Result<Tensor> {
    let (shape, data) = match spec.datatype {
        DataType::Bool => extract(value).map(|(s, v)| (s, TensorData::Bool(v)))?,
        DataType::Uint8 => extract(value).map(|(s, v)| (s, TensorData::Uint8(v)))?,
        DataType::Uint16 => extract(value).map(|(s, v)| (s, TensorData::Uint16(v)))?,
        DataType::Uint32 => extract(value).map(|(s, v)| (s, TensorData::Uint32(v)))?,
        DataType::Uint64 => extract(value).map(|(s, v)| (s, TensorData::Uint64(v)))?,
        DataType::Int8 => extract(value).map(|(s, v)| (s, TensorData::Int8(v)))?,
        DataType::Int16 => extract(value).map(|(s, v)| (s, TensorData::Int16(v)))?,
        DataType::Int32 => extract(value).map(|(s, v)| (s, TensorData::Int32(v)))?,
        DataType::Int64 => extract(value).map(|(s, v)| (s, TensorData::Int64(v)))?,
        DataType::Fp16 => extract(value).map(|(s, v)| (s, TensorData::Fp16(v)))?,
        DataType::Fp32 => extract(value).map(|(s, v)| (s, TensorData::Fp32(v)))?,
        DataType::Fp64 => extract(value).map(|(s, v)| (s, TensorData::Fp64(v)))?,
        DataType::Bytes => {
            let (shape, items) = strings::read(value)?;
            (shape, TensorData::Bytes(items))
        }
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

//! ONNX Runtime through `ort`, loading `libonnxruntime.so` at run time (feature `load-dynamic`).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::DynValue;

use super::Backend;
use crate::error::{Error, Result};
use crate::model_toml::{ModelToml, OptimizationLevel};
use crate::signature::{Signature, TensorSpec};
use crate::stats::Phases;
use crate::tensor::Tensor;

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
    /// Where the inputs' buffers are (the CPU), made once: each run's input views name it.
    memory: MemoryInfo<'static>,
    /// The signature's input and output names as C strings, made once: a run passes them as they are.
    input_names: Vec<CString>,
    output_names: Vec<CString>,
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
        let names = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|t| CString::new(t.name.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("a tensor name holds a NUL byte: {e}"))
        };
        let memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| format!("ONNX Runtime memory info: {e}"))?;
        Ok(OrtBackend {
            session,
            memory,
            input_names: names(&signature.inputs)?,
            output_names: names(&signature.outputs)?,
            outputs: signature.outputs.clone(),
        })
    }
}

impl Backend for OrtBackend {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Phases)> {
        let start = Instant::now();
        if inputs.len() != self.input_names.len()
            || inputs
                .iter()
                .zip(&self.input_names)
                .any(|(t, name)| t.name.as_bytes() != name.as_bytes())
        {
            return Err(Error::Internal(
                "the inputs are not the signature's, in its order".into(),
            ));
        }
        let feed = run::Feed::new(&self.memory, inputs)?;
        let converted = Instant::now();
        let results = run::Outputs::run(
            &mut self.session,
            &self.input_names,
            &feed,
            &self.output_names,
        )
        .map_err(|e| Error::Internal(format!("ONNX Runtime run failed: {e}")))?;
        let ran = Instant::now();
        let outputs = self
            .outputs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                results
                    .tensor(index, spec)
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
    use ort::value::{DynValue, Tensor as OrtTensor};

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

    /// The `count` elements of a string tensor, each read by its length.
    pub fn read(value: *const ort::sys::OrtValue, count: usize) -> ort::Result<Vec<Vec<u8>>> {
        let api = ort::api();
        let mut items = Vec::with_capacity(count);
        for index in 0..count {
            let mut len = 0usize;
            // SAFETY: `value` is a string tensor of `count` elements, alive for this call; ONNX Runtime
            // writes the length of element `index` into `len`.
            unsafe {
                ort::Error::result_from_status((api.GetStringTensorElementLength)(
                    value, index, &mut len,
                ))?;
            }
            let mut item = vec![0u8; len];
            // SAFETY: `item` has exactly `len` bytes, the element's length read above; ONNX Runtime copies
            // that element into it and writes nothing beyond `len`.
            unsafe {
                ort::Error::result_from_status((api.GetStringTensorElement)(
                    value,
                    len,
                    index,
                    item.as_mut_ptr().cast(),
                ))?;
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// A run through ONNX Runtime's C API. `ort`'s `Session::run` wraps each output in an owned value with its
/// own allocator handle, memory info and type (symbolic dimensions included) and is then searched by name,
/// none of which a backend that copies its outputs out at once needs: this path reads each output's type
/// and shape once, copies its elements and releases it (650 instructions fewer per single-row HTTP request
/// under `benches/instructions.py`, 2.4% more requests/s under wrk; docs/performance.md).
#[allow(unsafe_code)]
mod run {
    use std::ffi::CString;
    use std::ptr;

    use std::marker::PhantomData;

    use ort::AsPointer;
    use ort::memory::MemoryInfo;
    use ort::session::Session;
    use ort::sys::OrtValue;
    use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType};

    use crate::error::{Error, Result};
    use crate::signature::TensorSpec;
    use crate::tensor::{DataType, Tensor, TensorData};

    /// A run's inputs as ONNX Runtime values: views of the requests' own buffers, no copy (released
    /// when this drops), and string tensors, which ONNX Runtime must own. Made through the C API: `ort`'s
    /// `TensorRef` makes a memory info and its own shape and type records for each input of each run.
    pub struct Feed<'t> {
        values: Vec<*const OrtValue>,
        views: Vec<*mut OrtValue>,
        _strings: Vec<DynValue>,
        _inputs: PhantomData<&'t [Tensor]>,
    }

    impl Drop for Feed<'_> {
        fn drop(&mut self) {
            let api = ort::api();
            for &view in &self.views {
                // SAFETY: each view was created by `Feed::view` and is released once, here.
                unsafe { (api.ReleaseValue)(view) };
            }
        }
    }

    impl<'t> Feed<'t> {
        pub fn new(memory: &MemoryInfo, inputs: &'t [Tensor]) -> Result<Feed<'t>> {
            let mut feed = Feed {
                values: Vec::with_capacity(inputs.len()),
                views: Vec::with_capacity(inputs.len()),
                _strings: Vec::new(),
                _inputs: PhantomData,
            };
            for t in inputs {
                let shape = t.shape.as_slice();
                let view = match &t.data {
                    TensorData::Bool(v) => feed.view(memory, shape, v),
                    TensorData::Uint8(v) => feed.view(memory, shape, v),
                    TensorData::Uint16(v) => feed.view(memory, shape, v),
                    TensorData::Uint32(v) => feed.view(memory, shape, v),
                    TensorData::Uint64(v) => feed.view(memory, shape, v),
                    TensorData::Int8(v) => feed.view(memory, shape, v),
                    TensorData::Int16(v) => feed.view(memory, shape, v),
                    TensorData::Int32(v) => feed.view(memory, shape, v),
                    TensorData::Int64(v) => feed.view(memory, shape, v),
                    TensorData::Fp16(v) => feed.view(memory, shape, v),
                    TensorData::Fp32(v) => feed.view(memory, shape, v),
                    TensorData::Fp64(v) => feed.view(memory, shape, v),
                    TensorData::Bytes(v) => {
                        let value = super::string_tensor(&t.name, t.shape.clone(), v)?;
                        feed.values.push(value.ptr());
                        feed._strings.push(value);
                        continue;
                    }
                };
                view.map_err(|e| Error::Internal(format!("input '{}': {e}", t.name)))?;
            }
            Ok(feed)
        }

        /// Adds a view of `data` (of `shape`) that ONNX Runtime reads in place.
        fn view<T: PrimitiveTensorElementType>(
            &mut self,
            memory: &MemoryInfo,
            shape: &[usize],
            data: &'t [T],
        ) -> ort::Result<()> {
            let dims = shape
                .iter()
                .map(|&d| i64::try_from(d).map_err(|_| ort::Error::new(format!("dimension {d}"))))
                .collect::<ort::Result<Vec<i64>>>()?;
            if shape.iter().product::<usize>() != data.len() {
                return Err(ort::Error::new("the shape does not match the data"));
            }
            let mut value: *mut OrtValue = ptr::null_mut();
            // SAFETY: `data` holds exactly the elements `dims` describes (checked above) and is
            // borrowed for `'t`, as long as this feed, which releases the view before the borrow ends;
            // ONNX Runtime reads inputs and never writes them (the pointer is `*mut` in its C API
            // only); it copies `dims`.
            unsafe {
                ort::Error::result_from_status((ort::api().CreateTensorWithDataAsOrtValue)(
                    memory.ptr(),
                    data.as_ptr().cast_mut().cast(),
                    std::mem::size_of_val(data),
                    dims.as_ptr(),
                    dims.len(),
                    T::into_tensor_element_type().into(),
                    &mut value,
                ))?;
            }
            if value.is_null() {
                return Err(ort::Error::new("ONNX Runtime made no value"));
            }
            self.views.push(value);
            self.values.push(value);
            Ok(())
        }
    }

    /// A run's outputs, in the order of the names asked for; each is released when this drops.
    pub struct Outputs(Vec<*mut OrtValue>);

    impl Drop for Outputs {
        fn drop(&mut self) {
            let api = ort::api();
            for &value in &self.0 {
                if !value.is_null() {
                    // SAFETY: each non-null pointer is an output this run created and nothing else holds.
                    unsafe { (api.ReleaseValue)(value) };
                }
            }
        }
    }

    impl Outputs {
        /// Runs `session` on `values` named `inputs` (one name each), asking for `outputs`.
        pub fn run(
            session: &mut Session,
            inputs: &[CString],
            feed: &Feed<'_>,
            outputs: &[CString],
        ) -> ort::Result<Outputs> {
            let input_values = &feed.values;
            assert_eq!(inputs.len(), input_values.len(), "one name per input value");
            let input_names: Vec<*const std::ffi::c_char> =
                inputs.iter().map(|n| n.as_ptr()).collect();
            let output_names: Vec<*const std::ffi::c_char> =
                outputs.iter().map(|n| n.as_ptr()).collect();
            let mut results = Outputs(vec![ptr::null_mut(); outputs.len()]);
            // SAFETY: the session is borrowed mutably (ONNX Runtime's `Run` is not to be called on one
            // session from two threads at once); the name and value arrays hold `inputs.len()` and
            // `outputs.len()` valid pointers that outlive the call; ONNX Runtime writes one new value per
            // output name into `results`, which releases them.
            unsafe {
                ort::Error::result_from_status((ort::api().Run)(
                    session.ptr_mut(),
                    ptr::null(),
                    input_names.as_ptr(),
                    input_values.as_ptr(),
                    input_values.len(),
                    output_names.as_ptr(),
                    output_names.len(),
                    results.0.as_mut_ptr(),
                ))?;
            }
            Ok(results)
        }

        /// Output `index`, copied out as `spec`'s type; an error when ONNX Runtime made it another.
        pub fn tensor(&self, index: usize, spec: &TensorSpec) -> ort::Result<Tensor> {
            let value = self.0[index];
            if value.is_null() {
                return Err(ort::Error::new("ONNX Runtime returned no value"));
            }
            let (element, shape) = shape_of(value)?;
            let count: usize = shape.iter().product();
            let data = match spec.datatype {
                DataType::Bool => TensorData::Bool(copy(value, element, count)?),
                DataType::Uint8 => TensorData::Uint8(copy(value, element, count)?),
                DataType::Uint16 => TensorData::Uint16(copy(value, element, count)?),
                DataType::Uint32 => TensorData::Uint32(copy(value, element, count)?),
                DataType::Uint64 => TensorData::Uint64(copy(value, element, count)?),
                DataType::Int8 => TensorData::Int8(copy(value, element, count)?),
                DataType::Int16 => TensorData::Int16(copy(value, element, count)?),
                DataType::Int32 => TensorData::Int32(copy(value, element, count)?),
                DataType::Int64 => TensorData::Int64(copy(value, element, count)?),
                DataType::Fp16 => TensorData::Fp16(copy(value, element, count)?),
                DataType::Fp32 => TensorData::Fp32(copy(value, element, count)?),
                DataType::Fp64 => TensorData::Fp64(copy(value, element, count)?),
                DataType::Bytes => {
                    expect(element, TensorElementType::String)?;
                    TensorData::Bytes(super::strings::read(value, count)?)
                }
            };
            Ok(Tensor {
                name: spec.name.clone(),
                shape,
                data,
            })
        }
    }

    fn expect(element: TensorElementType, wanted: TensorElementType) -> ort::Result<()> {
        if element == wanted {
            Ok(())
        } else {
            Err(ort::Error::new(format!(
                "expected a tensor of {wanted}, got one of {element}"
            )))
        }
    }

    /// A tensor's element type and dimensions; an error for a value that is not a tensor. Read in one
    /// call from the value's own shape: `GetTensorTypeAndShape` builds a new info object for each
    /// output of each run (about 6,000 instructions under callgrind, two per run of the shipped
    /// logistic regression).
    fn shape_of(value: *const OrtValue) -> ort::Result<(TensorElementType, Vec<usize>)> {
        let mut element =
            ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        let mut dims: *const i64 = ptr::null();
        let mut rank = 0usize;
        // SAFETY: `value` is a live output; ONNX Runtime fails for a value that is not a tensor and
        // otherwise writes the element type and a pointer to the value's own `rank` dimensions, valid
        // while the value lives (it is read at once, below).
        unsafe {
            ort::Error::result_from_status(
                (ort::api().GetTensorElementTypeAndShapeDataReference)(
                    value,
                    &mut element,
                    &mut dims,
                    &mut rank,
                ),
            )?;
        }
        let dims: &[i64] = if rank == 0 || dims.is_null() {
            &[]
        } else {
            // SAFETY: ONNX Runtime's pointer to `rank` dimensions, owned by `value`, which outlives
            // this borrow.
            unsafe { std::slice::from_raw_parts(dims, rank) }
        };
        let shape = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| ort::Error::new(format!("dimension {d}"))))
            .collect::<ort::Result<Vec<_>>>()?;
        Ok((TensorElementType::from(element), shape))
    }

    /// The `count` elements of a tensor of `T`, copied into a vector.
    fn copy<T: PrimitiveTensorElementType + Copy>(
        value: *mut OrtValue,
        element: TensorElementType,
        count: usize,
    ) -> ort::Result<Vec<T>> {
        expect(element, T::into_tensor_element_type())?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: `value` is a live tensor of `count` elements of `T` (its type and shape read above);
        // ONNX Runtime hands back its buffer, aligned for `T`, which is only read here, before the value
        // is released.
        unsafe {
            ort::Error::result_from_status((ort::api().GetTensorMutableData)(value, &mut data))?;
            if data.is_null() {
                return Err(ort::Error::new("a tensor without data"));
            }
            Ok(std::slice::from_raw_parts(data.cast::<T>(), count).to_vec())
        }
    }
}

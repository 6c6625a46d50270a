//! Backends: one small synchronous trait, implemented by ONNX Runtime and by tract. A backend is created
//! and used on its instance's own OS thread (see `instance`); only a lone request of a model that computes
//! in microseconds borrows an idle instance's backend on an async worker (see `direct`).

pub mod onnxruntime;
pub mod tract;

use std::path::Path;

use crate::error::Result;
use crate::model_toml::{BackendChoice, ModelToml};
use crate::signature::Signature;
use crate::stats::Phases;
use crate::tensor::Tensor;

pub trait Backend: Send {
    /// Runs one batch. `inputs` are in signature order and already validated; the result holds every
    /// output of the signature, in signature order, and the time each phase took. The inputs are
    /// borrowed so the request keeps them: the prediction log takes them after the run instead of
    /// copying them before it.
    fn infer(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Phases)>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    OnnxRuntime,
    Tract,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::OnnxRuntime => "onnxruntime",
            BackendKind::Tract => "tract",
        }
    }

    /// Picks the backend for `choice`: `auto` prefers ONNX Runtime and falls back to tract when its
    /// library did not load (the reason was logged once at start-up).
    pub fn resolve(choice: BackendChoice) -> Result<Self, String> {
        let ort = onnxruntime::status();
        match (choice, ort) {
            (BackendChoice::Tract, _) => Ok(BackendKind::Tract),
            (BackendChoice::OnnxRuntime | BackendChoice::Auto, Ok(())) => {
                Ok(BackendKind::OnnxRuntime)
            }
            (BackendChoice::Auto, Err(_)) => Ok(BackendKind::Tract),
            (BackendChoice::OnnxRuntime, Err(why)) => Err(format!(
                "model.toml asks for backend \"onnxruntime\" but ONNX Runtime is not available ({why}); \
                 pass --ort-library PATH or set ORT_DYLIB_PATH to libonnxruntime.so, or run `make serve` \
                 to create .venv with the pinned onnxruntime wheel"
            )),
        }
    }

    /// Refuses BYTES elements this backend cannot take (tract: not UTF-8), as the client's error, before
    /// the request is batched with others: one bad element must not fail its neighbours' requests.
    /// ONNX Runtime takes any bytes.
    pub fn check_strings(self, inputs: &[Tensor]) -> Result<()> {
        match self {
            BackendKind::OnnxRuntime => Ok(()),
            BackendKind::Tract => tract::check_strings(inputs),
        }
    }

    /// Loads the model file into a ready-to-run backend. Called on the instance's thread.
    pub fn load(
        self,
        path: &Path,
        signature: &Signature,
        config: &ModelToml,
    ) -> Result<Box<dyn Backend>, String> {
        match self {
            BackendKind::OnnxRuntime => Ok(Box::new(onnxruntime::OrtBackend::load(
                path, signature, config,
            )?)),
            BackendKind::Tract => Ok(Box::new(tract::TractBackend::load(path, signature)?)),
        }
    }
}

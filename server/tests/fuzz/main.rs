//! Fuzz and property targets on stable Rust (docs/fuzzing.md): the HTTP JSON request codec, the binary
//! tensor extension (`Inference-Header-Content-Length` splitting), the gRPC request converter (on
//! structured `ModelInferRequest` values and on mutated wire bytes) and `model.toml`.
//!
//! Properties, for every input: no panic (proptest catches one, shrinks the input and fails the target);
//! a refusal is an `Err`; an accepted request is internally consistent (each tensor holds exactly the
//! elements its shape needs); a request generated valid is accepted and decodes to what was sent; and the
//! heap the call allocates stays under a bound linear in the input's size (`FACTOR * input + SLACK`),
//! whatever sizes the input declares. The heap is measured by a peak-live-bytes counter over the System
//! allocator (the `peak_alloc` crate, this test binary only); the targets take one lock so no other test
//! thread allocates while a case is measured.
//!
//! `KEEL_FUZZ_CASES` (default 256) cases per target from `KEEL_FUZZ_SEED` (default fixed, so `make test`
//! is reproducible); `make fuzz` runs a million per target in release with a fresh seed. Each target
//! prints its cases/s and the largest amplification seen. Known, reported failures have their minimized
//! reproducer as a `repro_*` test at the end of this file.
//!
//! The `#[test]` functions stay in this file, at the crate root, so their names are what `--exact` takes
//! (`fuzz_http_json`, not `http::fuzz_http_json`); the runner is in harness.rs, the generators and
//! checks of each target in its module (http*.rs, data_text.rs and serde_path.rs, grpc.rs, model_toml.rs).

mod data_text;
mod generators;
mod grpc;
mod harness;
mod http;
mod http_bulk;
mod http_request;
mod model_toml;
mod serde_path;

use std::sync::Mutex;

use keel_server::grpc::convert::wire;
use keel_server::grpc::{convert, pb};
use keel_server::http::codec;
use keel_server::http::json_data;
use keel_server::model_toml::{ModelToml, SourceConfig};
use keel_server::tensor::DataType;
use peak_alloc::PeakAlloc;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use prost::Message;

use data_text::data_text;
use generators::wire;
use grpc::{GrpcBulk, check_grpc_result, grpc_bulk_request, grpc_case, wire_case, wire_limits};
use harness::{bound_off, fuzz, measured, skip_known};
use http::{check_http, http_case, signature};
use http_bulk::{Bulk, Declared, bulk_body};
use model_toml::{TOML_SEEDS, toml_case};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// One test at a time (every test of this binary takes it): the allocation counter is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Fixed heap any call may use whatever its input (error strings, small maps, serde scratch).
const SLACK: usize = 64 * 1024;
/// Heap bytes per input byte a decoder may allocate. The legitimate worst case of the HTTP codec is JSON
/// BYTES data (`"",` is 3 bytes, its element a 24-byte `Vec`: 8x); numbers (`0,` to 8 bytes) are 4x.
const DECODE_FACTOR: usize = 8;
/// gRPC wire bytes to heap through prost's decoding and the converter: a packed varint `0` of
/// `int64_contents` is 1 byte on the wire and 8 in memory, and the counter charges a growing `Vec` its
/// old and new buffer at once (a copying realloc), so legitimate requests reach 24x.
const WIRE_FACTOR: usize = 32;
/// `model.toml` is the operator's and small; the toml crate parses it into a document model first, which
/// costs about 190 bytes per element of an integer array written `1,` (measured: 120x at 40 KB).
const TOML_FACTOR: usize = 256;

// ---------------------------------------------------------------------------------------------------
// HTTP: requests built valid, then mutated (the cases: http.rs, http_request.rs, http_bulk.rs)

#[test]
fn fuzz_http_json() {
    fuzz("http_json", http_case(false), check_http);
}

#[test]
fn fuzz_http_binary() {
    fuzz("http_binary", http_case(true), check_http);
}

/// `Inference-Header-Content-Length` as clients may send it.
#[test]
fn fuzz_http_header_length() {
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        select(vec![
            "",
            " 12 ",
            "-1",
            "+5",
            "0x10",
            "1e3",
            "18446744073709551616",
            "007",
            "12 13",
            "\t9",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        vec(any::<u8>(), 0..24),
    ];
    fuzz("http_header_length", value, |value, stats| {
        let Ok(header) = axum::http::HeaderValue::from_bytes(&value) else {
            return Ok(());
        };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(codec::HEADER_LENGTH, header);
        let result = codec::json_length(&headers);
        stats.outcome(&result);
        if let Ok(Some(n)) = result {
            let text = std::str::from_utf8(&value).unwrap();
            prop_assert_eq!(Some(n), text.trim().parse::<usize>().ok());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------------
// JSON `data`: the single-pass scanner against the serde path it replaced (data_text.rs, serde_path.rs)

/// `json_data::decode` against the serde path it replaced: the same texts accepted, to the same bits, and
/// the same refused. (FP32 is now rounded once from the text, where the serde path rounded to f64 first:
/// they differ only for text within an f64 rounding of a point halfway between two f32s, a chance of
/// about 2^-29 for the random numbers here; `fp32_is_rounded_once` in scan.rs tests such a case.)
#[test]
fn fuzz_json_data() {
    let datatype = select(DataType::ALL.to_vec());
    let count = prop_oneof![4 => Just(None), 1 => (0usize..64).prop_map(Some)];
    fuzz(
        "json_data",
        (data_text(), datatype, count),
        |((text, n), dt, count), stats| {
            let count = count.unwrap_or(n);
            let new = json_data::decode(&text, dt, count);
            let old = serde_path::decode(&text, dt, count);
            stats.outcome(&new);
            match (&new, &old) {
                (Ok(a), Ok(b)) => {
                    prop_assert!(wire(a) == wire(b), "{text} as {dt:?}: {a:?} != {b:?}")
                }
                (Err(_), Err(_)) => {}
                _ => {
                    return Err(TestCaseError::fail(format!(
                        "{text} as {dt:?} x {count}: now {new:?}, before {old:?}"
                    )));
                }
            }
            if let Err(e) = &new {
                prop_assert_eq!(e.http_status().as_u16(), 400, "{}", e);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------------
// gRPC: structured ModelInferRequest values, and their mutated wire bytes (grpc.rs)

/// The server's path for a message that was decoded without the wire check (`wire::check_decoded`, then
/// the converter), differentially against the wire check on the same message's encoding.
#[test]
fn fuzz_grpc_convert() {
    let signature = signature();
    let strategy = (grpc_case(), any::<bool>());
    fuzz("grpc_convert", strategy, |(case, with_signature), stats| {
        if skip_known() && case.req.outputs.len() > codec::MAX_TENSORS {
            return Err(TestCaseError::reject(
                "fixed_check_decoded_disagrees_with_the_wire_check_on_outputs",
            ));
        }
        let limits = wire_limits(with_signature.then_some(&signature));
        let encoded = case.req.encode_to_vec();
        let on_wire = wire::check(&encoded, limits);
        let (result, peak) = measured(|| {
            let decoded_check = wire::check_decoded(&case.req, limits);
            let converted = decoded_check
                .clone()
                .and_then(|_| convert::infer_request(case.req));
            (decoded_check, converted)
        });
        let (decoded_check, result) = result;
        stats.outcome(&result);
        // What the client sent: the server may use a few times that, never what the request declares.
        stats.bound(
            "check_decoded + infer_request",
            encoded.len(),
            peak,
            DECODE_FACTOR,
        )?;
        // The check on wire bytes and the one on the decoded message are the same checks: they accept the
        // same messages (they may name a different first problem).
        prop_assert_eq!(
            on_wire.is_ok(),
            decoded_check.is_ok(),
            "wire::check says {:?}, wire::check_decoded says {:?}",
            on_wire.as_ref().map(|_| ()).map_err(ToString::to_string),
            decoded_check
                .as_ref()
                .map(|_| ())
                .map_err(ToString::to_string)
        );
        check_grpc_result(result, case.expect.filter(|_| !with_signature))
    });
}

/// The server's ModelInfer path on raw message bytes: the wire check, then prost, then the converter.
#[test]
fn fuzz_grpc_wire() {
    let signature = signature();
    fuzz(
        "grpc_wire",
        (wire_case(), any::<bool>()),
        |(case, with_signature), stats| {
            let limits = wire_limits(with_signature.then_some(&signature));
            let bytes = &case.bytes.bytes;
            let (result, peak) = measured(|| {
                let estimate = wire::check(bytes, limits)?;
                let req = pb::ModelInferRequest::decode(bytes.as_slice())
                    .map_err(|e| keel_server::error::Error::invalid(e.to_string()))?;
                convert::infer_request(req).map(|r| (estimate, r))
            });
            stats.outcome(&result);
            stats.bound(
                "wire::check + decode + infer_request",
                bytes.len(),
                peak,
                WIRE_FACTOR,
            )?;
            if let Ok((estimate, converted)) = &result {
                let held: usize = converted.inputs.iter().map(|t| t.data.heap_bytes()).sum();
                prop_assert!(
                    held <= estimate.tensor_bytes,
                    "tensors hold {held} bytes, the wire check estimated {}",
                    estimate.tensor_bytes
                );
                // What the in-flight budget is charged covers what was built (a copying realloc counted
                // at twice, as the counter sees it).
                let estimated = estimate.message_bytes + estimate.tensor_bytes;
                prop_assert!(
                    peak <= 2 * estimated + SLACK || bound_off(),
                    "built {peak} bytes at peak, the wire check estimated {estimated}"
                );
            }
            match result {
                Ok((_, r)) => check_grpc_result(Ok(r), None),
                Err(e) => check_grpc_result(Err(e), None),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------------
// model.toml (model_toml.rs)

#[test]
fn fuzz_model_toml() {
    // The seeds are valid: the generators start from configurations the server accepts.
    for seed in TOML_SEEDS {
        ModelToml::parse(seed).unwrap_or_else(|e| panic!("seed refused: {e}\n{seed}"));
    }
    fuzz("model_toml", toml_case(), |case, stats| {
        let (result, peak) = measured(|| ModelToml::parse(&case.text));
        stats.outcome(&result);
        stats.bound("ModelToml::parse", case.text.len(), peak, TOML_FACTOR)?;
        let Ok(config) = result else {
            return Ok(());
        };
        // What the server does with an accepted configuration must not panic either.
        prop_assert!(config.instance_count() >= 1);
        let _ = config.version_policy.select(&[3, 1, 2, u64::MAX]);
        if let Some(SourceConfig::Mlflow(source)) = &config.source
            && let Some(seconds) = source.poll_interval
        {
            prop_assert!(
                std::time::Duration::try_from_secs_f64(seconds).is_ok(),
                "accepted poll_interval {seconds} is no Duration"
            );
        }
        if let Some(monitor) = &config.monitor {
            for rule in monitor.effective_rules() {
                let _ = rule.thresholds();
                let _ = rule.rule_name();
            }
            let _ = monitor.effective_task();
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------------
// Reproducers of failures the targets found, minimized; each bug is fixed and its test guards the fix.

/// FIXED BUG (a regression test now), minimized from `fuzz_grpc_convert` (seed 1801807212): one FP32 input and 5000 requested
/// outputs. `wire::check` refuses it (at most `MAX_TENSORS` = 4096 outputs), `wire::check_decoded`
/// (server/src/grpc/convert/wire.rs), the same checks on a message prost already decoded, lets it
/// through, so the request is refused or served depending on the path that decoded it.
#[test]
fn fixed_check_decoded_disagrees_with_the_wire_check_on_outputs() {
    // Every test of this binary holds the lock: the allocation counter is process-wide.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let req = grpc_bulk_request(&GrpcBulk::Outputs(5000));
    let on_wire = wire::check(&req.encode_to_vec(), wire_limits(None));
    let decoded = wire::check_decoded(&req, wire_limits(None));
    assert_eq!(
        on_wire.as_ref().map(|_| ()).map_err(ToString::to_string),
        decoded.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
}

/// FIXED BUG (a regression test now), minimized from `fuzz_http_json` and `fuzz_http_binary` (seed 20261201, after about 15,000
/// cases): a BYTES input declaring 20,000 elements whose `data` holds numbers (`[0,0,...]`, 2 bytes an
/// element, refused at the first one). `json_data::flatten` (server/src/http/json_data.rs) reserves the
/// declared count before reading an element, 24 bytes a `Vec<u8>`: 480 KB for a 40 KB body (12x, over
/// the 8x bound; a real BYTES element takes at least 3 bytes, `"",`). `--max-bytes-elements` caps it at
/// 24 MiB per request, so the absolute cost is bounded; reserving at most `raw.len() / 3` fixes it.
#[test]
fn fixed_json_bytes_reserve_follows_the_declared_count() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (body, _) = bulk_body(&Bulk::Data {
        datatype: "BYTES",
        token: "0",
        n: 20_000,
        declared: Declared::Truthful,
    });
    let (result, peak) = measured(|| codec::decode_request(&body, None));
    assert!(result.is_err());
    let limit = DECODE_FACTOR * body.len() + SLACK;
    assert!(
        peak <= limit,
        "refusing a {} byte body allocated {peak} bytes (bound {limit})",
        body.len()
    );
}

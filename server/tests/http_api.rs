//! The KServe V2 REST API against real servers on 127.0.0.1: metadata, inference in JSON and binary,
//! version routing, both backends.

mod common;

use common::{
    TempRepo, TestServer, breast_cancer_rows, example_models, infer_body, split_binary, workspace,
};
use serde_json::{Value, json};

#[tokio::test]
async fn health_and_server_metadata() {
    let s = TestServer::start(&example_models()).await;
    assert_eq!(
        s.client
            .get(s.url("/v2/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.client
            .get(s.url("/v2/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, meta) = s.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "keel");
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn model_metadata_config_and_readiness() {
    let s = TestServer::start(&example_models()).await;
    let (status, meta) = s.get("/v2/models/breast-cancer").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(
        meta["inputs"],
        json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 30] }])
    );
    assert_eq!(
        meta["outputs"][0],
        json!({ "name": "label", "datatype": "INT64", "shape": [-1] })
    );
    assert_eq!(
        meta["outputs"][1],
        json!({ "name": "probabilities", "datatype": "FP32", "shape": [-1, 2] })
    );

    let (status, config) = s.get("/v2/models/breast-cancer/versions/1/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["max_batch_size"], 1024);
    // Triton writes every field of the effective configuration, defaults included.
    let input = &config["input"][0];
    assert_eq!(config["input"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (&input["name"], &input["data_type"], &input["dims"]),
        (&json!("input"), &json!("TYPE_FP32"), &json!([30]))
    );
    assert_eq!(input["optional"], false);
    assert_eq!(config["output"][1]["dims"], json!([2]));
    assert_eq!(config["output"][0]["dims"], json!([1]));
    assert_eq!(config["output"][0]["reshape"], json!({ "shape": [] }));

    for path in [
        "/v2/models/breast-cancer/ready",
        "/v2/models/breast-cancer/versions/2/ready",
    ] {
        assert_eq!(
            s.client.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for (path, code) in [
        ("/v2/models/nope", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/breast-cancer/versions/9", 404),
        ("/v2/models/breast-cancer/versions/9/config", 404),
        ("/v2/models/breast-cancer/versions/x", 400),
        ("/v2/nothing/here", 404),
    ] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, code, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn json_inference_flat_nested_versions_and_outputs() {
    let s = TestServer::start(&example_models()).await;
    let mut body = infer_body(3);
    body["id"] = json!("req-7");
    let (status, latest) = s.post_json("/v2/models/breast-cancer/infer", &body).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["model_version"], "2");
    assert_eq!(latest["id"], "req-7");
    assert_eq!(latest["outputs"][0]["shape"], json!([3]));
    assert_eq!(latest["outputs"][1]["shape"], json!([3, 2]));
    assert!(latest.get("parameters").is_none() && latest["outputs"][0].get("parameters").is_none());

    // Nested rows give the same answer as flat data.
    let rows = breast_cancer_rows(3);
    let nested: Vec<Vec<f32>> = rows.chunks(30).map(<[f32]>::to_vec).collect();
    let nested_body = json!({ "id": "req-7", "inputs": [{ "name": "input", "shape": [3, 30], "datatype": "FP32", "data": nested }] });
    let (_, again) = s
        .post_json("/v2/models/breast-cancer/versions/2/infer", &nested_body)
        .await;
    assert_eq!(again, latest);

    // Version 1 is a different model: its probabilities differ.
    let (_, v1) = s
        .post_json("/v2/models/breast-cancer/versions/1/infer", &body)
        .await;
    assert_eq!(v1["model_version"], "1");
    assert_ne!(v1["outputs"][1]["data"], latest["outputs"][1]["data"]);

    // Requested outputs: only those, in the order asked.
    body["outputs"] = json!([{ "name": "probabilities" }]);
    let (_, subset) = s.post_json("/v2/models/breast-cancer/infer", &body).await;
    assert_eq!(subset["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(subset["outputs"][0]["name"], "probabilities");
    s.server.shutdown().await.unwrap();
}

fn binary_request(rows: usize, outputs: Value) -> (Vec<u8>, usize) {
    let data = breast_cancer_rows(rows);
    let header = json!({
        "inputs": [{ "name": "input", "shape": [rows, 30], "datatype": "FP32", "parameters": { "binary_data_size": data.len() * 4 } }],
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len();
    for v in data {
        body.extend_from_slice(&v.to_le_bytes());
    }
    (body, json_len)
}

#[tokio::test]
async fn binary_tensor_extension_both_directions() {
    let s = TestServer::start(&example_models()).await;
    let (_, reference) = s
        .post_json("/v2/models/breast-cancer/infer", &infer_body(37))
        .await;
    let (body, json_len) = binary_request(
        37,
        json!([{ "name": "label", "parameters": { "binary_data": true } }, { "name": "probabilities", "parameters": { "binary_data": true } }]),
    );
    let (status, headers, reply) = s
        .post_raw(
            "/v2/models/breast-cancer/infer",
            body,
            &[("Inference-Header-Content-Length", json_len.to_string())],
        )
        .await;
    assert_eq!(status, 200);
    let (head, tail) = split_binary(&headers, &reply);
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 37 * 8);
    assert_eq!(
        head["outputs"][1]["parameters"]["binary_data_size"],
        37 * 2 * 4
    );
    let raw = tail;
    let labels: Vec<i64> = raw[..37 * 8]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let probs: Vec<f32> = raw[37 * 8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(json!(labels), reference["outputs"][0]["data"]);
    let reference_probs: Vec<f32> =
        serde_json::from_value(reference["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(probs, reference_probs);

    // binary_data_output on the request makes every output binary; a per-output false overrides it.
    let data = breast_cancer_rows(1);
    let mixed = json!({
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP32", "data": data }],
        "outputs": [{ "name": "label", "parameters": { "binary_data": false } }, { "name": "probabilities" }],
    });
    let (status, headers, reply) = s
        .post_raw(
            "/v2/models/breast-cancer/infer",
            serde_json::to_vec(&mixed).unwrap(),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let (head, tail) = split_binary(&headers, &reply);
    assert!(head["outputs"][0]["data"].is_array());
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 8);
    assert_eq!(tail.len(), 8);
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tract_and_onnxruntime_agree_and_tract_refuses_what_it_cannot_run() {
    let lr = workspace().join("models/breast-cancer/2/model.onnx");
    let gbt = workspace().join("models/breast-cancer-gbt/1/model.onnx");
    let repo = TempRepo::new(
        "backends",
        &[
            ("lr-ort", &lr, "backend = \"onnxruntime\""),
            ("lr-tract", &lr, "backend = \"tract\""),
            ("gbt-tract", &gbt, "backend = \"tract\""),
            ("bad-toml", &lr, "colour = \"blue\""),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let body = infer_body(37);
    let (status, ort) = s.post_json("/v2/models/lr-ort/infer", &body).await;
    assert_eq!(status, 200, "{ort}");
    let (status, tract) = s.post_json("/v2/models/lr-tract/infer", &body).await;
    assert_eq!(status, 200, "{tract}");
    assert_eq!(ort["outputs"][0]["data"], tract["outputs"][0]["data"]);
    let close = ort["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(tract["outputs"][1]["data"].as_array().unwrap());
    for (a, b) in close {
        assert!(
            (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5,
            "{a} vs {b}"
        );
    }
    let (_, config) = s.get("/v2/models/lr-tract/config").await;
    assert_eq!(config["runtime"], "tract");

    // The tree ensemble never loads on tract: the reason names the operator and how to use ONNX Runtime.
    let (status, err) = s.post_json("/v2/models/gbt-tract/infer", &body).await;
    assert_eq!(status, 503);
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("TreeEnsembleClassifier") && msg.contains("onnxruntime"),
        "{msg}"
    );
    // An unknown model.toml key names the key and the file; the other models still serve.
    let (status, err) = s.post_json("/v2/models/bad-toml/infer", &body).await;
    assert_eq!(status, 503);
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("colour") && msg.contains("model.toml"),
        "{msg}"
    );
    s.server.shutdown().await.unwrap();
}

/// One Identity per datatype: what goes in must come out, through both backends, JSON and binary.
#[tokio::test]
async fn every_datatype_round_trips_on_both_backends() {
    let model = workspace().join("tests/models/datatypes/1/model.onnx");
    let repo = TempRepo::new(
        "dtypes",
        &[
            ("dt-ort", &model, "backend = \"onnxruntime\""),
            ("dt-tract", &model, "backend = \"tract\""),
        ],
    );
    let s = TestServer::start(&repo.root).await;
    let values: Vec<(&str, Value)> = vec![
        ("BOOL", json!([true, false, true, false, false, true])),
        ("UINT8", json!([0, 1, 2, 253, 254, 255])),
        ("UINT16", json!([0, 1, 2, 3, 4, 65535])),
        ("UINT32", json!([0, 1, 2, 3, 4, 4294967295u64])),
        ("UINT64", json!([0, 1, 2, 3, 4, 18446744073709551615u64])),
        ("INT8", json!([-128, -1, 0, 1, 2, 127])),
        ("INT16", json!([-32768, -1, 0, 1, 2, 32767])),
        ("INT32", json!([-2147483648i64, -1, 0, 1, 2, 2147483647])),
        (
            "INT64",
            json!([-9223372036854775808i64, -1, 0, 1, 2, 9223372036854775807i64]),
        ),
        ("FP16", json!([0.5, -1.5, 0.0, 2.0, 1024.0, -0.25])),
        ("FP32", json!([0.1, -1.5, 0.0, 3.25, 1e30, -7.0])),
        ("FP64", json!([0.1, -1.5, 0.0, 3.25, 1e300, -7.0])),
        ("BYTES", json!(["a", "", "héllo", "x", "yz", "keel"])),
    ];
    let inputs: Vec<Value> = values
        .iter()
        .map(|(dt, data)| json!({ "name": format!("in_{}", dt.to_lowercase()), "shape": [2, 3], "datatype": dt, "data": data }))
        .collect();
    for model in ["dt-ort", "dt-tract"] {
        let (status, reply) = s
            .post_json(
                &format!("/v2/models/{model}/infer"),
                &json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(status, 200, "{model}: {reply}");
        for (i, (dt, data)) in values.iter().enumerate() {
            let out = &reply["outputs"][i];
            assert_eq!(out["name"], format!("out_{}", dt.to_lowercase()));
            assert_eq!(out["datatype"], *dt);
            assert_eq!(out["shape"], json!([2, 3]));
            if *dt == "FP32" {
                let got: Vec<f32> = serde_json::from_value(out["data"].clone()).unwrap();
                let want: Vec<f32> = serde_json::from_value(data.clone()).unwrap();
                assert_eq!(got, want, "{model} {dt}");
            } else {
                assert_eq!(out["data"], *data, "{model} {dt}");
            }
        }
        // The same through binary outputs: byte-exact little-endian.
        let body = json!({ "inputs": inputs, "parameters": { "binary_data_output": true } });
        let (status, headers, raw) = s
            .post_raw(
                &format!("/v2/models/{model}/infer"),
                serde_json::to_vec(&body).unwrap(),
                &[],
            )
            .await;
        assert_eq!(status, 200);
        let (head, tail) = split_binary(&headers, &raw);
        let sizes: Vec<u64> = head["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
            .collect();
        assert_eq!(
            sizes,
            vec![
                6,
                6,
                12,
                24,
                48,
                6,
                12,
                24,
                48,
                12,
                24,
                48,
                4 * 6 + 1 + 6 + 1 + 2 + 4
            ]
        );
        assert_eq!(tail.len(), sizes.iter().sum::<u64>() as usize);
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json_errors() {
    let s = TestServer::start(&example_models()).await;
    let (status, body) = s.get("/v2/no/such/thing").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = s.post_json("/v2/health/live", &json!({})).await;
    assert_eq!(status, 405);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = s.get("/v2/models/breast-cancer/infer").await;
    assert_eq!(status, 405);
    assert!(body["error"].is_string(), "{body}");
    s.server.shutdown().await.unwrap();
}

/// Plain inference paths skip the router (edge.rs); percent-encoded and malformed ones go through it.
/// Both ways answer alike.
#[tokio::test]
async fn inference_paths_answer_alike_with_or_without_the_router() {
    let s = TestServer::start(&example_models()).await;
    let body = infer_body(1);
    let (status, plain) = s.post_json("/v2/models/breast-cancer/infer", &body).await;
    assert_eq!(status, 200, "{plain}");
    for path in [
        "/v2/models/breast%2Dcancer/infer",
        "/v2/models/breast-cancer/versions/2/infer",
        "/v2/models/breast-cancer/versions/%32/infer",
    ] {
        let (status, reply) = s.post_json(path, &body).await;
        assert_eq!(status, 200, "{path}: {reply}");
        assert_eq!(reply["model_name"], plain["model_name"], "{path}");
        assert_eq!(reply["model_version"], "2", "{path}");
        assert_eq!(reply["outputs"], plain["outputs"], "{path}");
    }
    let (status, reply) = s
        .post_json("/v2/models/breast-cancer/versions/1/infer", &body)
        .await;
    assert_eq!((status, &reply["model_version"]), (200, &json!("1")));
    for (path, expected) in [
        ("/v2/models/no-such-model/infer", 404),
        ("/v2/models/no%2Dsuch/infer", 404),
        ("/v2/models//infer", 404),
        ("/v2/models/breast-cancer/versions//infer", 400),
        ("/v2/models/breast-cancer/versions/9/infer", 404),
        ("/v2/models/breast-cancer/versions/x/infer", 400),
    ] {
        let (status, reply) = s.post_json(path, &body).await;
        assert_eq!(status, expected, "{path}: {reply}");
        assert!(reply["error"].is_string(), "{path}: {reply}");
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_ids_are_random_unless_the_client_sends_one() {
    let s = TestServer::start(&example_models()).await;
    let path = "/v2/models/breast-cancer/infer";
    let body = serde_json::to_vec(&infer_body(1)).unwrap();
    let (status, headers, reply) = s.post_raw(path, body.clone(), &[]).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    let id = reply["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(headers["x-request-id"], id.as_str());
    let (_, headers, reply) = s
        .post_raw(path, body.clone(), &[("x-request-id", "abc".into())])
        .await;
    assert_eq!(headers["x-request-id"], "abc");
    assert_eq!(
        serde_json::from_slice::<Value>(&reply).unwrap()["id"],
        "abc"
    );
    let (status, _, _) = s
        .post_raw(path, body, &[("x-request-id", "x".repeat(300))])
        .await;
    assert_eq!(status, 400, "an id too long to log is refused");
    s.server.shutdown().await.unwrap();
}

//! model.toml: valid seeds, every key of the reference with valid and hostile values, byte mutations
//! and bulk arrays.

use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use crate::generators::{byte_ops, interesting_f64, mutate, repeat};

pub(crate) const TOML_SEEDS: &[&str] = &[
    r#"backend = "onnxruntime"
max_batch_size = 64
instances = 2
version_policy = { latest = 2 }
[inputs.input]
shape = [-1, 30]
[onnxruntime]
intra_op_threads = 1
graph_optimization_level = "extended"
[dynamic_batching]
max_queue_delay_us = 500
preferred_batch_sizes = [32, 64]
max_queue_size = 256
default_timeout_us = 100000
[reload]
allow_signature_change = false
warmup_runs = 2
"#,
    r#"[source.mlflow]
tracking_uri = "http://mlflow:5000"
name = "breast-cancer"
alias = "champion"
poll_interval = 5
"#,
    r#"version_policy = { specific = [1, 3] }
[monitor]
task = "classifier"
prediction_output = "label"
sample_rate = 0.5
min_samples = 100
[[monitor.rules]]
metric = "csi"
fire = 0.25
clear = 0.1
consecutive = 3
cooldown_s = 3600
[[monitor.rules]]
metric = "accuracy"
fire = 0.8
clear = 0.85
"#,
];

/// Every key of the model.toml reference, with the table it sits in.
const TOML_KEYS: &[(&str, &str)] = &[
    ("", "backend"),
    ("", "max_batch_size"),
    ("", "version_policy"),
    ("", "instances"),
    ("inputs.input", "shape"),
    ("outputs.label", "shape"),
    ("onnxruntime", "intra_op_threads"),
    ("onnxruntime", "inter_op_threads"),
    ("onnxruntime", "graph_optimization_level"),
    ("dynamic_batching", "max_queue_delay_us"),
    ("dynamic_batching", "preferred_batch_sizes"),
    ("dynamic_batching", "max_queue_size"),
    ("dynamic_batching", "default_timeout_us"),
    ("reload", "allow_signature_change"),
    ("reload", "warmup_runs"),
    ("source.mlflow", "tracking_uri"),
    ("source.mlflow", "name"),
    ("source.mlflow", "alias"),
    ("source.mlflow", "poll_interval"),
    ("monitor", "sample_rate"),
    ("monitor", "task"),
    ("monitor", "prediction_output"),
    ("monitor", "positive_label"),
    ("monitor", "min_samples"),
    ("monitor", "min_feedback"),
    ("[monitor.rules]", "metric"),
    ("[monitor.rules]", "fire"),
    ("[monitor.rules]", "clear"),
    ("[monitor.rules]", "consecutive"),
    ("[monitor.rules]", "cooldown_s"),
    ("[monitor.rules]", "name"),
    ("", "colour"),
];

fn toml_value() -> impl Strategy<Value = String> + Clone {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(vec![
            "0",
            "1",
            "-1",
            "2",
            "64",
            "1024",
            "4294967296",
            "18446744073709551615",
            "1e300",
            "-1e300",
            "nan",
            "inf",
            "-inf",
            "+inf",
            "0.0",
            "-0.0",
            "1e-320",
            "0.5",
            "1.5",
            "9e18",
            "true",
            "false",
            "\"auto\"",
            "\"tract\"",
            "\"onnxruntime\"",
            "\"all\"",
            "\"basic\"",
            "\"classifier\"",
            "\"regressor\"",
            "\"psi\"",
            "\"csi\"",
            "\"csi:mean radius\"",
            "\"accuracy\"",
            "\"false_positive_rate\"",
            "\"mae\"",
            "\"label\"",
            "\"\"",
            "\" \"",
            "\"http://h:5000\"",
            "1979-05-27T07:32:00Z",
            "{ latest = 0 }",
            "{ latest = 2 }",
            "{ specific = [] }",
            "{ specific = [0] }",
            "{ specific = [1, 3] }",
            "{ all = 1 }",
            "[-1, 30]",
            "[-2]",
            "[]",
            "[0]",
            "[1, 2, 3]",
            "[[1]]",
            "{}",
            "\"\\u0000\"",
        ])
        .prop_map(String::from),
        interesting_f64().prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            vec(("[a-z_]{1,6}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

#[derive(Clone)]
pub(crate) struct TomlCase {
    pub(crate) text: String,
}

impl fmt::Debug for TomlCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

pub(crate) fn toml_case() -> impl Strategy<Value = TomlCase> {
    let structured = vec((select(TOML_KEYS.to_vec()), toml_value()), 0..10).prop_map(|entries| {
        // Group by table, top-level keys first; [[monitor.rules]] starts a new rule per key half the time.
        let mut tables: Vec<(&str, Vec<String>)> = Vec::new();
        for ((table, key), value) in entries {
            let line = format!("{key} = {value}");
            match tables.iter_mut().find(|(t, _)| *t == table) {
                Some((_, lines)) if !table.starts_with("[[") => lines.push(line),
                _ => tables.push((table, vec![line])),
            }
        }
        tables.sort_by_key(|(t, _)| !t.is_empty());
        let mut text = String::new();
        for (table, lines) in tables {
            if let Some(array) = table.strip_prefix('[') {
                text.push_str(&format!("[[{}]]\n", array.trim_end_matches(']')));
            } else if !table.is_empty() {
                text.push_str(&format!("[{table}]\n"));
            }
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
        }
        TomlCase { text }
    });
    let mutated = (select(TOML_SEEDS.to_vec()), byte_ops()).prop_map(|(seed, ops)| {
        let mut bytes = seed.as_bytes().to_vec();
        mutate(&mut bytes, &ops);
        TomlCase {
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    });
    let seeds = select(TOML_SEEDS.to_vec()).prop_map(|s| TomlCase { text: s.into() });
    let bulky = (0u8..4, select(vec![2_000usize, 20_000])).prop_map(|(kind, n)| TomlCase {
        text: match kind {
            0 => format!(
                "[dynamic_batching]\npreferred_batch_sizes = {}\n",
                repeat("1", n)
            ),
            1 => format!("version_policy = {{ specific = {} }}\n", repeat("1", n)),
            2 => format!("[inputs.input]\nshape = {}\n", repeat("-1", n)),
            _ => format!(
                "[monitor]\ntask = \"classifier\"\n{}",
                "[[monitor.rules]]\nmetric = \"psi\"\n".repeat(n / 10)
            ),
        },
    });
    prop_oneof![1 => seeds, 5 => structured, 4 => mutated, 1 => bulky]
}

//! Batch assembly and split: concatenating many requests' inputs into one backend call and cutting the
//! outputs back per request, for breast-cancer-shaped tensors.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel_server::batch::{concat, split};
use keel_server::tensor::{Tensor, TensorData};

fn request(rows: usize) -> Vec<Tensor> {
    let data = (0..rows * 30).map(|i| i as f32 * 0.5).collect();
    vec![Tensor {
        name: "input".into(),
        shape: vec![rows, 30],
        data: TensorData::Fp32(data),
    }]
}

fn outputs(rows: usize) -> Vec<Tensor> {
    vec![
        Tensor {
            name: "label".into(),
            shape: vec![rows],
            data: TensorData::Int64(vec![1; rows]),
        },
        Tensor {
            name: "probabilities".into(),
            shape: vec![rows, 2],
            data: TensorData::Fp32(vec![0.5; rows * 2]),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    // (requests, rows per request)
    for (requests, rows) in [(64usize, 1usize), (8, 32), (32, 8)] {
        let total = requests * rows;
        group.throughput(Throughput::Elements(total as u64));
        let id = format!("{requests}x{rows}");
        let inputs: Vec<Vec<Tensor>> = (0..requests).map(|_| request(rows)).collect();
        group.bench_with_input(BenchmarkId::new("concat", &id), &inputs, |b, inputs| {
            b.iter(|| concat(inputs))
        });
        let counts = vec![rows; requests];
        group.bench_with_input(BenchmarkId::new("split", &id), &counts, |b, counts| {
            b.iter_batched(
                || outputs(total),
                |o| split(o, counts).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

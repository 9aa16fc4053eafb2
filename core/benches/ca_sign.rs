//! Leaf signing from a CSR (P-256), the CA's hot operation during mass rotations.

use std::hint::black_box;
use std::sync::Arc;

use connect_core::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut ca = CaManager::new_primary(
        "dc1",
        None,
        CaConfiguration::consul(Default::default()),
        Arc::new(connect_core::SystemClock),
    )
    .unwrap_or_else(|e| panic!("CA init: {e}"));
    let uri = format!("spiffe://{}/ns/default/dc/dc1/svc/web", ca.trust_domain());
    let csr = generate_leaf_request(&uri, &[], &[])
        .unwrap_or_else(|e| panic!("CSR: {e}"))
        .csr_pem;
    let mut g = c.benchmark_group("ca");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_leaf_p256", |b| {
        b.iter(|| {
            ca.sign_leaf(black_box(&csr), SignPolicy::ServiceOnly)
                .map(|i| i.serial_number)
        })
    });
    g.bench_function("leaf_key_and_csr_p256", |b| {
        b.iter(|| generate_leaf_request(black_box(&uri), &[], &[]).map(|r| r.csr_pem.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

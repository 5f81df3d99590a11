//! A policy reload of 100,000 rules through the proxy's own reload path,
//! timed until the new set is in force: read and parse the YAML directory
//! (ten files, parsed on up to four threads), compile, swap in (arc-swap)
//! and wake the live connections' watchers. The set replaced before is
//! freed on another thread, as in the proxy. Also its two halves: reading
//! and parsing, and compile-and-swap from parsed documents. Then parsing and
//! compiling 100,000 rules of every shape (`policy_shapes`): the cost must
//! stay linear whatever the rules look like. Target: < 1 s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use palisade_bench::policy_shapes::Shape;
use palisade_policy::DefaultPolicy;
use palisade_policy::{compile, parse_documents, Defaults};
use palisade_proxy::config::SourceKind;
use palisade_proxy::metrics::Metrics;
use palisade_proxy::policy::file::{read_path, FileRead, PathKind};
use palisade_proxy::policy::reload::{Reloader, Update};
use palisade_proxy::policy::LivePolicy;

const RULES: usize = 100_000;
const RULES_PER_POLICY: usize = 10;
const FILES: usize = 10;

/// `RULES` rules, ten per policy, one workload per policy, spread over
/// `FILES` multi-document files. `variant` changes one rule name, so two
/// variants compile to different versions and every reload swaps.
fn write_policies(dir: &Path, variant: u32) {
    let policies = RULES / RULES_PER_POLICY;
    let per_file = policies / FILES;
    for f in 0..FILES {
        let mut text = String::with_capacity(per_file * 1200);
        for p in f * per_file..(f + 1) * per_file {
            text += &format!(
                "---\napiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
                 metadata: {{name: svc{p}, namespace: ns{ns}}}\n\
                 spec:\n  targets:\n    - identity: spiffe://cluster.local/ns/ns{ns}/sa/svc{p}\n  ingress:\n",
                ns = p % 100
            );
            for r in 0..RULES_PER_POLICY {
                let n = p * RULES_PER_POLICY + r;
                let name = if n == 0 {
                    format!("r0-v{variant}")
                } else {
                    format!("r{r}")
                };
                let (action, from) = match r {
                    3 => (
                        "deny",
                        format!(
                            "identity: spiffe://cluster.local/ns/ns{}/sa/svc{}",
                            (n + 3) % 100,
                            n + 3
                        ),
                    ),
                    9 => (
                        "allow",
                        format!("cidr: 10.{}.{}.0/24", (n / 256) % 256, n % 256),
                    ),
                    _ => (
                        "allow",
                        format!(
                            "identity: spiffe://cluster.local/ns/ns{}/sa/svc{}",
                            (n + 7) % 100,
                            n + 7
                        ),
                    ),
                };
                text += &format!(
                    "    - name: {name}\n      action: {action}\n      from: [{{{from}}}]\n      ports: [{}]\n",
                    1000 + n % 60_000
                );
            }
        }
        std::fs::write(dir.join(format!("p{f:02}.yaml")), text).expect("write policies");
    }
}

fn reloader() -> Reloader {
    Reloader::new(
        Arc::new(LivePolicy::default()),
        Arc::new(Metrics::new()),
        DefaultPolicy::AllAuthenticated,
        SourceKind::File,
        None,
    )
}

fn bench_reload(c: &mut Criterion) {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (0..2)
        .map(|v| {
            let d = root.path().join(format!("v{v}"));
            std::fs::create_dir(&d).unwrap();
            write_policies(&d, v);
            d
        })
        .collect();
    let parsed: Vec<_> = dirs.iter().map(|d| read_path(d).expect("valid")).collect();
    let rules: usize = parsed[0]
        .iter()
        .map(|d| d.ingress.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(rules, RULES);

    let mut g = c.benchmark_group("reload_100k_rules");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let r = reloader();
    // Live connections each hold a receiver; the swap wakes them all.
    let _watchers: Vec<_> = (0..1000).map(|_| r.live.subscribe()).collect();
    let mut i = 0usize;
    g.bench_function("read_parse_compile_swap", |b| {
        b.iter(|| {
            i += 1;
            let docs = read_path(&dirs[i % 2]).expect("valid");
            assert!(r.apply(file(docs)).is_some(), "every reload swaps");
        })
    });
    let mut k = 0usize;
    g.bench_function("read_parse", |b| {
        b.iter_with_large_drop(|| {
            k += 1;
            read_path(&dirs[k % 2]).expect("valid")
        })
    });
    let mut j = 0usize;
    g.bench_function("compile_swap", |b| {
        b.iter_batched(
            || {
                j += 1;
                parsed[j % 2].clone()
            },
            |docs| r.apply(file(docs)),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn file(docs: Vec<palisade_policy::PolicyDoc>) -> Update {
    Update::File(FileRead {
        docs,
        kind: PathKind::Directory,
        allow_empty: false,
    })
}

fn bench_shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile_100k_rules");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for shape in Shape::ALL {
        let yaml = shape.yaml(RULES, 0);
        g.bench_with_input(
            BenchmarkId::new("parse_compile", shape.name()),
            &yaml,
            |b, yaml| {
                b.iter(|| {
                    let docs = parse_documents("shape.yaml", yaml).expect("valid");
                    compile(docs, Defaults::new(DefaultPolicy::Deny)).expect("compiles")
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_reload, bench_shapes);
criterion_main!(benches);

//! A configuration the proxy cannot use stops it at start, with an error that
//! names the offending setting.

use std::process::Command;

use palisade_tests::bin;

fn run_with(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin("palisade-proxy"))
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_field_in_the_config_file_is_named_and_the_proxy_does_not_start() {
    let (ok, err) = run_with("mode: explicit\ninbound:\n  prots: []\n", &[]);
    assert!(!ok);
    assert!(err.contains("prots"), "{err}");
}

#[test]
fn bad_environment_override_is_named_and_the_proxy_does_not_start() {
    let (ok, err) = run_with("", &[("PALISADE_TIMEOUT_IDLE", "forever")]);
    assert!(!ok);
    assert!(err.contains("PALISADE_TIMEOUT_IDLE"), "{err}");
}

#[test]
fn missing_bootstrap_bundle_is_named_and_the_proxy_does_not_start() {
    let cfg = "mode: explicit\ninbound:\n  ports: [{listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}]\nadmin: {bind: \"127.0.0.1:0\"}\nidentity: {bootstrap_bundle: /nonexistent/bundle.pem, join_token: t}\n";
    let (ok, err) = run_with(cfg, &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
}

#[test]
fn a_setting_of_the_other_mode_is_named_with_the_mode_and_the_proxy_does_not_start() {
    let (ok, err) = run_with(
        "mode: explicit\noutbound:\n  unmeshed: passthrough\n  routes: []\n",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("outbound.unmeshed"), "{err}");
    assert!(err.contains("mode: explicit"), "{err}");
}

#[test]
fn any_setting_is_overridden_by_the_variable_named_after_its_path() {
    let (ok, err) = run_with("", &[("PALISADE_HTTP_MAX_HEADER_BYTES", "100")]);
    assert!(!ok);
    assert!(
        err.contains("http.max_header_bytes must be at least 8192"),
        "{err}"
    );
}

/// A cgroup with a CPU quota of `quota_us` per 100 ms (cgroup v1's `cpu`
/// controller, or v2's `cpu.max`), removed on drop.
struct CpuQuota {
    dir: std::path::PathBuf,
}

impl CpuQuota {
    fn new(quota_us: u32) -> CpuQuota {
        let name = format!("palisade-test-{}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).expect("creating a cgroup v1 cpu group (run as root)");
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
            dir
        } else {
            let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
                .expect("neither cgroup v1's cpu controller nor cgroup v2 is mounted");
            assert!(
                controllers.contains("cpu"),
                "cgroup v2 without the cpu controller"
            );
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(name);
            std::fs::create_dir_all(&dir).expect("creating a cgroup v2 group (run as root)");
            std::fs::write(dir.join("cpu.max"), format!("{quota_us} 100000")).unwrap();
            dir
        };
        CpuQuota { dir }
    }

    /// `cmd` run inside this group: the shell joins it, then becomes `cmd`.
    fn run(&self, cmd: &mut Command) -> std::process::Output {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
        sh.output().unwrap()
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The worker count the proxy logs as it starts (it then stops: no bundle).
fn workers_logged(out: &std::process::Output) -> usize {
    let err = String::from_utf8_lossy(&out.stderr);
    let key = "\"workers\":";
    let at = err.find(key).unwrap_or_else(|| panic!("{err}"));
    let n: String = err[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    n.parse().unwrap_or_else(|_| panic!("{err}"))
}

/// Under a limit of half a core the proxy runs one worker: two would spend
/// the quota together in half a period and then both wait, throttled.
/// Without a limit it runs two, or one per CPU if it has fewer.
#[test]
fn the_runtime_takes_no_more_workers_than_the_cpu_quota_allows() {
    let proxy = || {
        let mut c = Command::new(bin("palisade-proxy"));
        c.env("PALISADE_BOOTSTRAP_BUNDLE", "/nonexistent/bundle.pem")
            .env("PALISADE_LOG", "info")
            .env("PALISADE_LOG_JSON", "true");
        c
    };
    let half_a_core = CpuQuota::new(50_000);
    assert_eq!(workers_logged(&half_a_core.run(&mut proxy())), 1);

    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers_logged(&proxy().output().unwrap()), cpus.min(2));
}

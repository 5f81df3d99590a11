//! `palisadectl policy ...`: check, explain, test and diff segmentation
//! policies. Every answer comes from `palisade_policy::decide`, the function
//! the proxy enforces with.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_identity::api::PolicyFileText;
use palisade_identity::client::AdminClient;
use palisade_policy::cases::{parse_cases, run_cases, Outcome};
use palisade_policy::flow::{decide_flow_with, Check, Endpoint, Flow, FlowDecision, HttpRequest};
use palisade_policy::fs::{load_paths, LoadError};
use palisade_policy::normalize::{Handling, Normalization};
use palisade_policy::reach::{self, ReachPath};
use palisade_policy::{
    compile, CompiledPolicy, DefaultPolicy, Defaults, Diagnostic, Direction, Verdict,
};
use serde_json::json;

/// What `--default` means when not given: the proxy's own default.
pub(crate) const DEFAULT_POLICY: &str = "all-authenticated";

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files or directories; exit 0 when valid, 1 when not.
    Check {
        /// Policy files, multi-document files or directories of *.yaml/*.yml;
        /// a file may be a `List`, as `kubectl get segmentationpolicies -o yaml` prints.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate a directory of policies exactly as `check` does, then make
    /// them the control plane's policies (through its admin socket, into its
    /// state store): every replica serves them to its proxies.
    Apply(ApplyArgs),
    /// Explain the decision for one flow: the verdict and the rule or default
    /// that made it. Without --direction, both sidecars' checks are shown.
    Explain(ExplainArgs),
    /// Run a file of expected decisions against the policies; exit 1 on any
    /// mismatch, printing a table of the failures.
    Test {
        /// Policy file or directory (repeatable).
        #[arg(long = "policy", required = true)]
        policies: Vec<PathBuf>,
        /// The cases file.
        cases: PathBuf,
        /// Overrides the cases file's `default`.
        #[arg(long = "default", value_parser = parse_default)]
        default_policy: Option<DefaultPolicy>,
    },
    /// Show which (source, destination, port, route) flows a change opens
    /// and closes, over everything either version names.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long = "default", default_value = DEFAULT_POLICY, value_parser = parse_default)]
        default_policy: DefaultPolicy,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Exit 1 when the reachability changed (for CI gates).
        #[arg(long)]
        exit_code: bool,
    },
    /// Print the JSON Schema of the policy language (for editors and linters).
    Schema,
    /// Print the SegmentationPolicy CustomResourceDefinition (YAML), made
    /// from the same schema.
    Crd,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Directory of *.yaml/*.yml policy files (the whole set: policies not
    /// in it are removed).
    pub dir: PathBuf,
    /// The control plane's admin socket (default <state-dir>/admin.sock).
    #[arg(long, env = "PALISADE_ADMIN_SOCKET")]
    pub admin_socket: PathBuf,
    /// Apply even if the directory holds no policy, removing every policy.
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Policy file or directory (repeatable).
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// The source: a SPIFFE ID, or an IP address. For --direction egress,
    /// the local workload.
    #[arg(long)]
    from: String,
    /// The destination: a SPIFFE ID, or an IP address. For --direction
    /// ingress, the local workload.
    #[arg(long)]
    to: String,
    #[arg(long)]
    port: u16,
    /// An HTTP method, to check one request as well as the connection.
    #[arg(long)]
    method: Option<String>,
    /// An HTTP request target: path and query (defaults to `/`). It is
    /// normalized as the proxy does before any rule is matched.
    #[arg(long)]
    path: Option<String>,
    /// An HTTP host (the `Host` header), normalized as the proxy does.
    #[arg(long)]
    host: Option<String>,
    /// A path class the proxy normalizes instead of rejecting with 400, as
    /// its `http.normalization.<class>: normalize` (repeatable).
    #[arg(long = "normalize", value_enum)]
    normalize: Vec<PathClass>,
    /// Only this sidecar's check; default: egress at --from, then ingress at --to.
    #[arg(long, value_parser = parse_direction)]
    direction: Option<Direction>,
    /// What applies to workloads no policy selects; match the proxy's setting.
    #[arg(long = "default", default_value = DEFAULT_POLICY, value_parser = parse_default)]
    default_policy: DefaultPolicy,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The classes of `http.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathClass {
    EscapedSlashes,
    Backslash,
    PathParameters,
    Fragment,
}

fn normalization(classes: &[PathClass]) -> Normalization {
    let mut n = Normalization::default();
    for c in classes {
        let slot = match c {
            PathClass::EscapedSlashes => &mut n.escaped_slashes,
            PathClass::Backslash => &mut n.backslash,
            PathClass::PathParameters => &mut n.path_parameters,
            PathClass::Fragment => &mut n.fragment,
        };
        *slot = Handling::Normalize;
    }
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub(crate) fn parse_default(s: &str) -> Result<DefaultPolicy, String> {
    s.parse()
        .map_err(|e: palisade_policy::UnknownDefaultPolicy| e.to_string())
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    s.parse()
}

/// Runs a policy subcommand; returns the process exit code.
pub async fn run(cmd: PolicyCmd) -> anyhow::Result<i32> {
    match cmd {
        PolicyCmd::Check { paths } => Ok(check(&paths)),
        PolicyCmd::Apply(args) => apply(args).await,
        PolicyCmd::Explain(args) => explain(&args),
        PolicyCmd::Test {
            policies,
            cases,
            default_policy,
        } => test(&policies, &cases, default_policy),
        PolicyCmd::Diff {
            old,
            new,
            default_policy,
            output,
            exit_code,
        } => diff(&old, &new, default_policy, output, exit_code),
        PolicyCmd::Schema => {
            print!("{}", palisade_policy::schema::json_schema_text());
            Ok(0)
        }
        PolicyCmd::Crd => {
            print!("{}", palisade_policy::crd::crd_yaml());
            Ok(0)
        }
    }
}

/// Loads and compiles, or prints why not. `Ok(None)` means "invalid, and
/// the diagnostics are printed".
pub(crate) fn load<P: AsRef<Path>>(
    paths: &[P],
    default_policy: DefaultPolicy,
) -> anyhow::Result<Option<CompiledPolicy>> {
    match load_and_report(paths, default_policy, &mut std::io::stderr(), false)? {
        Some(Valid { policy, .. }) => Ok(Some(policy)),
        None => Ok(None),
    }
}

/// A policy set that loaded and compiled.
struct Valid {
    policy: CompiledPolicy,
    files: usize,
    warnings: usize,
}

/// Loads, compiles and prints diagnostics to `out` (warnings too when
/// `warnings` is set). I/O failures are errors; bad policies are `Invalid`.
fn load_and_report<P: AsRef<Path>>(
    paths: &[P],
    default_policy: DefaultPolicy,
    out: &mut dyn Write,
    warnings: bool,
) -> anyhow::Result<Option<Valid>> {
    let loaded = match load_paths(paths) {
        Ok(l) => l,
        Err(LoadError::Invalid(diags)) => {
            print_diagnostics(out, &diags)?;
            return Ok(None);
        }
        Err(e @ LoadError::Io { .. }) => return Err(e.into()),
    };
    let files = loaded.files.len();
    match compile(loaded.docs, Defaults::new(default_policy)) {
        Ok((policy, warns)) => {
            if warnings {
                print_diagnostics(out, &warns)?;
            }
            Ok(Some(Valid {
                policy,
                files,
                warnings: warns.len(),
            }))
        }
        Err(diags) => {
            print_diagnostics(out, &diags)?;
            Ok(None)
        }
    }
}

fn print_diagnostics(out: &mut dyn Write, diags: &[Diagnostic]) -> std::io::Result<()> {
    for d in diags {
        writeln!(out, "{d}")?;
    }
    Ok(())
}

fn check(paths: &[PathBuf]) -> i32 {
    let mut out = std::io::stdout().lock();
    // Validity does not depend on the default; any will do.
    match load_and_report(paths, DefaultPolicy::Deny, &mut out, true) {
        Ok(Some(Valid {
            policy,
            files,
            warnings,
        })) => {
            let _ = writeln!(
                out,
                "ok: {} policies, {} rules in {files} file(s); version {}; {warnings} warning(s)",
                policy.docs().len(),
                policy.rule_count(),
                policy.version(),
            );
            if policy.docs().is_empty() {
                let _ = writeln!(out, "{}", empty_note(paths));
            }
            0
        }
        Ok(None) => {
            let _ = writeln!(out, "invalid: fix the errors above");
            1
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e:#}");
            1
        }
    }
}

/// `policy apply`: the `check` validation, then the files go to the
/// control plane, which validates them again before storing them.
async fn apply(args: ApplyArgs) -> anyhow::Result<i32> {
    let code = check(std::slice::from_ref(&args.dir));
    if code != 0 {
        return Ok(code);
    }
    let files = palisade_policy::fs::read_files(&[&args.dir])?
        .into_iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(f.name);
            PolicyFileText { name, yaml: f.text }
        })
        .collect();
    let applied = AdminClient::new(&args.admin_socket)
        .apply_policies(files, args.allow_empty)
        .await?;
    println!(
        "applied: the control plane now serves {} document(s)",
        applied.documents
    );
    Ok(0)
}

/// What a running proxy or control plane does with a source that holds no
/// policy: a reload to it is refused unless the marker makes it deliberate.
fn empty_note(paths: &[PathBuf]) -> String {
    let marker = palisade_policy::fs::ALLOW_EMPTY_MARKER;
    if paths.iter().all(|p| palisade_policy::fs::empty_allowed(p)) {
        format!("note: no policy document, and {marker} is present: a running proxy or control plane accepts removing every policy")
    } else {
        format!("warning: no policy document: a running proxy or control plane refuses to reload to this (reason `emptied`) and keeps its policies, unless {marker} is in the policy directory or next to the policy file")
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<i32> {
    let Some(policy) = load(&args.policies, args.default_policy)? else {
        return Ok(1);
    };
    let from: Endpoint = args
        .from
        .parse()
        .with_context(|| format!("--from {:?}", args.from))?;
    let to: Endpoint = args
        .to
        .parse()
        .with_context(|| format!("--to {:?}", args.to))?;
    let http = (args.method.is_some() || args.path.is_some() || args.host.is_some()).then(|| {
        HttpRequest {
            method: args.method.clone().unwrap_or_else(|| "GET".into()),
            path: args.path.clone().unwrap_or_else(|| "/".into()),
            host: args.host.clone(),
        }
    });
    let flow = Flow {
        from,
        to,
        port: args.port,
        http,
    };
    let decision = decide_flow_with(
        &policy,
        &flow,
        args.direction,
        &normalization(&args.normalize),
    )?;
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => {
            let checks: Vec<_> = decision
                .checks
                .iter()
                .map(|c| check_json(c, &flow))
                .collect();
            let doc = json!({
                "verdict": decision.verdict(),
                "version": policy.version(),
                "default": policy.default_policy(),
                "from": flow.from.to_string(),
                "to": flow.to.to_string(),
                "port": flow.port,
                "http": flow.http.as_ref().map(http_json),
                "normalized": decision.request.as_ref().and_then(|r| r.as_ref().ok()).map(http_json),
                "rejected": decision.rejected().map(|r| json!({"status": 400, "reason": r.reason(), "text": r.text()})),
                "checks": checks,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Text => write_explanation(&mut out, &policy, &flow, &decision)?,
    }
    Ok(0)
}

fn http_json(h: &HttpRequest) -> serde_json::Value {
    json!({"method": h.method, "path": h.path, "host": h.host})
}

/// `(local workload, peer)` of a check.
fn sides(check: &Check, flow: &Flow) -> (String, String) {
    match check.direction {
        Direction::Egress => (flow.from.to_string(), flow.to.to_string()),
        Direction::Ingress => (flow.to.to_string(), flow.from.to_string()),
    }
}

fn check_json(check: &Check, flow: &Flow) -> serde_json::Value {
    let (local, peer) = sides(check, flow);
    json!({
        "direction": check.direction,
        "local": local,
        "peer": peer,
        "verdict": check.verdict(),
        "connection": check.connection,
        "request": check.request,
    })
}

fn write_explanation(
    out: &mut dyn Write,
    policy: &CompiledPolicy,
    flow: &Flow,
    d: &FlowDecision,
) -> anyhow::Result<()> {
    let request = flow
        .http
        .as_ref()
        .map(|h| format!(" {} {}", h.method, h.path))
        .unwrap_or_default();
    writeln!(
        out,
        "flow: {} -> {} port {}{request}",
        flow.from, flow.to, flow.port
    )?;
    match &d.request {
        Some(Ok(n)) => {
            let host = n
                .host
                .as_deref()
                .map(|h| format!(" (host {h})"))
                .unwrap_or_default();
            writeln!(out, "normalized: {} {}{host}", n.method, n.path)?;
        }
        Some(Err(r)) => writeln!(out, "rejected: 400 before any rule ({}): {r}", r.reason())?,
        None => {}
    }
    writeln!(
        out,
        "policy version {} (default for unselected workloads: {})",
        policy.version(),
        policy.default_policy()
    )?;
    for check in &d.checks {
        let (local, peer) = sides(check, flow);
        writeln!(
            out,
            "\n{} at {local} (peer {peer}): {}",
            check.direction,
            verdict_word(check.verdict())
        )?;
        writeln!(out, "  connection: {}", check.connection)?;
        if let Some(r) = &check.request {
            writeln!(out, "  request:    {r}")?;
        } else if check.connection.http_required && d.request.is_none() {
            writeln!(
                out,
                "  non-HTTP traffic is denied: only HTTP requests matching the rule pass"
            )?;
        }
    }
    if let Some(r) = d.rejected() {
        writeln!(out, "\nresult: DENY (rejected with 400: {})", r.reason())?;
        return Ok(());
    }
    let decider = d.deciding();
    writeln!(
        out,
        "\nresult: {} ({} at {}: {})",
        verdict_word(d.verdict()),
        decider.direction,
        sides(decider, flow).0,
        decider.deciding().label()
    )?;
    Ok(())
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "ALLOW",
        Verdict::Deny => "DENY",
    }
}

fn test(
    policies: &[PathBuf],
    cases_path: &Path,
    default_policy: Option<DefaultPolicy>,
) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(cases_path)
        .with_context(|| format!("cannot read {}", cases_path.display()))?;
    let cases = match parse_cases(&cases_path.display().to_string(), &text) {
        Ok(c) => c,
        Err(diags) => {
            print_diagnostics(&mut std::io::stderr(), &diags)?;
            return Ok(1);
        }
    };
    let default_policy = default_policy
        .or(cases.default_policy)
        .unwrap_or(DefaultPolicy::AllAuthenticated);
    let Some(policy) = load(policies, default_policy)? else {
        return Ok(1);
    };
    let outcomes = run_cases(&policy, &cases.cases);
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    let mut out = std::io::stdout().lock();
    if failures.is_empty() {
        writeln!(
            out,
            "ok: {} cases passed (policy version {}, default {default_policy})",
            outcomes.len(),
            policy.version()
        )?;
        return Ok(0);
    }
    writeln!(
        out,
        "FAILED: {} of {} cases (policy version {}, default {default_policy})\n",
        failures.len(),
        outcomes.len(),
        policy.version()
    )?;
    let rows: Vec<Vec<String>> = failures
        .iter()
        .map(|o| {
            let (got, why) = match &o.decision {
                Ok(d) => {
                    let c = d.deciding();
                    let why = match d.rejected() {
                        Some(r) => format!("rejected with 400: {r}"),
                        None => format!(
                            "{} at {}: {}",
                            c.direction,
                            sides(c, &o.case.flow).0,
                            c.deciding()
                        ),
                    };
                    (d.verdict().to_string(), why)
                }
                Err(e) => ("error".to_owned(), e.clone()),
            };
            vec![
                format!("{}:{}", cases_path.display(), o.case.pos),
                o.case.name.clone(),
                o.case.expect.to_string(),
                got,
                why,
            ]
        })
        .collect();
    write_table(
        &mut out,
        &["LOCATION", "CASE", "EXPECTED", "GOT", "DECIDED BY"],
        &rows,
    )?;
    Ok(1)
}

fn diff(
    old: &Path,
    new: &Path,
    default_policy: DefaultPolicy,
    output: Output,
    exit_code: bool,
) -> anyhow::Result<i32> {
    let Some(before) = load(&[old], default_policy)? else {
        return Ok(1);
    };
    let Some(after) = load(&[new], default_policy)? else {
        return Ok(1);
    };
    let d = reach::diff(&before, &after);
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let doc = json!({
                "old": {"path": old.display().to_string(), "version": before.version()},
                "new": {"path": new.display().to_string(), "version": after.version()},
                "default": default_policy,
                "opened": d.opened,
                "closed": d.closed,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Output::Text => {
            writeln!(
                out,
                "reachability diff {} ({}) -> {} ({}), default {default_policy}",
                old.display(),
                before.version(),
                new.display(),
                after.version()
            )?;
            if d.is_empty() {
                writeln!(out, "no change: every flow is as reachable as before")?;
            }
            for (title, paths) in [("opened", &d.opened), ("closed", &d.closed)] {
                if paths.is_empty() {
                    continue;
                }
                writeln!(out, "\n{title} ({}):", paths.len())?;
                write_table(
                    &mut out,
                    &["SOURCE", "DESTINATION", "PORT", "ROUTE"],
                    &rows_of(paths),
                )?;
            }
        }
    }
    Ok(if exit_code && !d.is_empty() { 1 } else { 0 })
}

fn rows_of(paths: &[ReachPath]) -> Vec<Vec<String>> {
    paths
        .iter()
        .map(|p| {
            vec![
                p.source.clone(),
                p.destination.clone(),
                p.port.clone(),
                p.route.clone(),
            ]
        })
        .collect()
}

/// A plain, left-aligned table: what a terminal and a CI log both show well.
fn write_table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

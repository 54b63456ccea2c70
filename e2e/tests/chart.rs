//! The Helm chart on the real cluster: the release `make up` installs is deployed with the
//! chart's objects, re-applying its manifest changes nothing (no drift), and every object the
//! chart renders — default values and each `charts/testdata/values/*.yaml` — passes the
//! apiserver's strict validation (an unknown field is an error; duplicate keys, which kubectl
//! drops before sending, are refused by `make chart-check`).

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use ferrite_e2e::{Cluster, repo_root, tool, tool_ok};
use serde_json::Value;

const RELEASE: &str = "ferrite";
const NAMESPACE: &str = "ferrite-system";

/// What the chart installs with the values `make up` gives it, as (kind, name).
const CHART_OBJECTS: [(&str, &str); 8] = [
    ("ServiceAccount", "ferrite-operator"),
    ("ClusterRole", "ferrite-operator"),
    ("ClusterRoleBinding", "ferrite-operator"),
    ("Role", "ferrite-operator"),
    ("RoleBinding", "ferrite-operator"),
    ("Deployment", "ferrite-operator"),
    ("ClusterNetwork", "default"),
    ("IPPool", "default"),
];

/// The manifest Helm applied for the release's current revision.
fn release_manifest() -> Result<String> {
    tool_ok("helm", &["get", "manifest", RELEASE, "-n", NAMESPACE], "")
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn the_helm_release_is_deployed_with_the_charts_objects() -> Result<()> {
    Cluster::connect().await?;
    let status: Value = serde_json::from_str(&tool_ok(
        "helm",
        &["status", RELEASE, "-n", NAMESPACE, "-o", "json"],
        "",
    )?)
    .context("helm status -o json")?;
    ensure!(
        status["info"]["status"] == "deployed",
        "release {RELEASE} is {}, not deployed",
        status["info"]["status"]
    );
    let live: Value = serde_json::from_str(&tool_ok(
        "kubectl",
        &["get", "-f", "-", "-o", "json"],
        &release_manifest()?,
    )?)?;
    let items = match live["kind"].as_str() {
        Some("List") => live["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![live],
    };
    let mut found = BTreeSet::new();
    for item in &items {
        let (kind, name) = (
            item["kind"].as_str().unwrap_or_default(),
            item["metadata"]["name"].as_str().unwrap_or_default(),
        );
        let labels = &item["metadata"]["labels"];
        let annotations = &item["metadata"]["annotations"];
        ensure!(
            labels["app.kubernetes.io/managed-by"] == "Helm"
                && labels["app.kubernetes.io/instance"] == RELEASE
                && labels["app.kubernetes.io/part-of"] == "ferrite",
            "{kind}/{name} lacks the chart's labels: {labels}"
        );
        ensure!(
            annotations["meta.helm.sh/release-name"] == RELEASE
                && annotations["meta.helm.sh/release-namespace"] == NAMESPACE,
            "{kind}/{name} is not owned by release {NAMESPACE}/{RELEASE}: {annotations}"
        );
        found.insert((kind.to_owned(), name.to_owned()));
    }
    let missing: Vec<_> = CHART_OBJECTS
        .iter()
        .filter(|(k, n)| !found.contains(&((*k).to_owned(), (*n).to_owned())))
        .collect();
    ensure!(
        missing.is_empty(),
        "the release lacks {missing:?}; it has {found:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn reapplying_the_release_manifest_shows_no_drift() -> Result<()> {
    Cluster::connect().await?;
    // NB: a field manager of our own, not Helm's: as `helm`, the diff would also drop what
    // Helm adds to every object beyond its manifest (the meta.helm.sh/release-* annotations).
    // Drift is a declared field whose live value differs, which any manager's apply shows.
    let out = tool(
        "kubectl",
        &[
            "diff",
            "--server-side",
            "--field-manager=ferrite-e2e-drift",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &release_manifest()?,
    )?;
    match out.code {
        Some(0) => Ok(()),
        Some(1) => bail!(
            "the live objects drifted from the release's manifest:\n{}",
            out.stdout
        ),
        code => bail!(
            "kubectl diff failed ({code:?}): {}{}",
            out.stdout,
            out.stderr
        ),
    }
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn every_object_the_chart_renders_passes_strict_server_validation() -> Result<()> {
    Cluster::connect().await?;
    let chart = repo_root().join("charts/ferrite");
    let chart = chart.to_str().context("the chart's path is UTF-8")?;
    let mut values_files: Vec<_> = std::fs::read_dir(repo_root().join("charts/testdata/values"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    values_files.sort();
    ensure!(
        !values_files.is_empty(),
        "no values files in charts/testdata/values"
    );
    let mut cases = vec![None];
    cases.extend(values_files.iter().map(Some));
    for values in cases {
        // NB: the pool gets a name of its own, so the dry run validates creating it rather
        // than updating the live pool, whose CIDR and block size are immutable.
        let mut args = vec![
            "template",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "ipPool.name=e2e-chart-dry-run",
        ];
        let what = match values {
            Some(path) => {
                args.extend(["--values", path.to_str().context("UTF-8 path")?]);
                path.display().to_string()
            }
            None => String::from("the default values"),
        };
        let rendered = tool_ok("helm", &args, "")?;
        let objects = rendered.lines().filter(|l| l.starts_with("kind:")).count();
        ensure!(objects > 0, "{what} rendered nothing");
        let applied = tool_ok(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--validate=strict",
                "--force-conflicts",
                // As Helm: what an upgrade to these values would make of the live objects
                // (Helm's own fields that the new render drops are dropped, not merged).
                "--field-manager=helm",
                "-f",
                "-",
            ],
            &rendered,
        )
        .with_context(|| format!("the apiserver refused what the chart renders with {what}"))?;
        let validated = applied
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        ensure!(
            validated == objects,
            "{what}: {objects} objects rendered, {validated} validated:\n{applied}"
        );
    }
    Ok(())
}

//! The real proof of the CRDs' validation: a real kube-apiserver accepts every example in
//! `docs/examples/` and refuses every object in `crds/testdata/invalid/` with its message.

use anyhow::{Context, Result, bail, ensure};
use ferrite_crds::catalog::{self, Case};
use ferrite_crds::{ClusterNetwork, EncryptionPolicy, IPPool, NodeNetwork, all_crds};
use ferrite_e2e::{Cluster, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::Value;
use std::time::Duration;

const MANAGER: &str = "ferrite-e2e";

async fn install_crds(cluster: &Cluster) -> Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut applied = Vec::new();
    for crd in all_crds() {
        let name = crd.metadata.name.clone().context("CRD has a name")?;
        let pp = PatchParams::apply(MANAGER).force();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying {name}"))?;
        // Returned once Established: the apiextensions controller writes that status itself.
        let settled = wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                let c = api.get(&name).await?;
                let conditions = c
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                let established = conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(c))
            },
        )
        .await?;
        applied.push(settled);
    }
    Ok(applied)
}

fn api_for(cluster: &Cluster, object: &Value) -> Result<Api<DynamicObject>> {
    let ar = match object["kind"].as_str().unwrap_or_default() {
        "IPPool" => ApiResource::erase::<IPPool>(&()),
        "ClusterNetwork" => ApiResource::erase::<ClusterNetwork>(&()),
        "EncryptionPolicy" => ApiResource::erase::<EncryptionPolicy>(&()),
        "NodeNetwork" => ApiResource::erase::<NodeNetwork>(&()),
        other => bail!("unknown kind {other}"),
    };
    Ok(Api::all_with(cluster.client.clone(), &ar))
}

fn renamed(object: &Value, name: &str) -> Value {
    let mut o = object.clone();
    o["metadata"]["name"] = Value::String(name.to_owned());
    o
}

/// Applies `object` server-side; returns the stored object.
async fn apply(cluster: &Cluster, object: &Value) -> Result<DynamicObject> {
    let api = api_for(cluster, object)?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pp = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&name, &pp, &Patch::Apply(object)).await?)
}

async fn delete(cluster: &Cluster, object: &Value) -> Result<()> {
    let api = api_for(cluster, object)?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if api.get_opt(name).await?.is_some() {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn crds_install_and_a_second_apply_changes_nothing() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let first = install_crds(&cluster).await?;
    let second = install_crds(&cluster).await?;
    for (a, b) in first.iter().zip(&second) {
        ensure!(
            a.metadata.resource_version == b.metadata.resource_version,
            "re-applying {:?} changed it (drift)",
            a.metadata.name
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn the_apiserver_accepts_every_example_and_a_second_apply_changes_nothing() -> Result<()> {
    let cluster = Cluster::connect().await?;
    install_crds(&cluster).await?;
    let examples = catalog::examples()?;
    ensure!(examples.len() == 4, "one example per kind");
    let mut result = Ok(());
    for (file, object) in &examples {
        let object = renamed(
            object,
            &format!(
                "e2e-example-{}",
                object["metadata"]["name"].as_str().unwrap_or_default()
            ),
        );
        // The cluster runs Ferrite: its ClusterNetwork `default` and the NodeNetworks are live
        // state the agents act on. Those two examples are checked with a server-side dry run
        // (the apiserver validates and defaults them, nothing is stored); the other kinds are
        // applied for real, twice, and must not drift.
        let live = matches!(
            object["kind"].as_str(),
            Some("ClusterNetwork" | "NodeNetwork")
        );
        if live {
            let object = if object["kind"] == "ClusterNetwork" {
                renamed(&object, "default")
            } else {
                object
            };
            let api = api_for(&cluster, &object)?;
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let pp = PatchParams::apply(MANAGER).force().dry_run();
            let outcome = api
                .patch(name, &pp, &Patch::Apply(&object))
                .await
                .map(|_| ())
                .with_context(|| format!("{} was refused (dry run)", file.display()));
            result = result.and(outcome);
            continue;
        }
        let first = apply(&cluster, &object)
            .await
            .with_context(|| format!("{} was refused", file.display()));
        let outcome = match first {
            Ok(first) => {
                let second = apply(&cluster, &object).await?;
                if first.metadata.resource_version == second.metadata.resource_version {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "re-applying {} changed it (drift)",
                        file.display()
                    ))
                }
            }
            Err(e) => Err(e),
        };
        delete(&cluster, &object).await?;
        result = result.and(outcome);
    }
    result
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn the_apiserver_refuses_every_bad_object_with_a_message_that_says_what_to_fix() -> Result<()>
{
    let cluster = Cluster::connect().await?;
    install_crds(&cluster).await?;
    let cases: Vec<Case> = catalog::invalid_cases()?;
    ensure!(cases.len() >= 20, "the catalog shrank to {}", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let file = case.file.display();
        // Updates need their base first; both get a name of their own so cases don't collide.
        let mut base = None;
        let object = match &case.update_of {
            Some(example) => {
                let name = format!("e2e-catalog-{i}");
                let b = renamed(&catalog::example(example)?, &name);
                apply(&cluster, &b)
                    .await
                    .with_context(|| format!("{file}: base {example} was refused"))?;
                base = Some(b);
                renamed(&case.object, &name)
            }
            None => case.object.clone(),
        };
        let api = api_for(&cluster, &object)?;
        let outcome = match &base {
            Some(_) => apply(&cluster, &object).await.map(|_| ()),
            None => {
                let dynamic: DynamicObject = serde_json::from_value(object.clone())?;
                api.create(&PostParams::default(), &dynamic)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        };
        match outcome {
            Ok(()) => {
                failures.push(format!("{file}: accepted"));
                delete(&cluster, &object).await?;
            }
            Err(e) if !e.to_string().contains(&case.expect) => {
                failures.push(format!("{file}: expected {:?} in {e}", case.expect));
            }
            Err(_) => {}
        }
        if let Some(b) = &base {
            delete(&cluster, b).await?;
        }
    }
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

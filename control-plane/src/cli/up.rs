//! `palisadectl up`: a local mesh on loopback (control plane, three demo
//! workloads behind their own sidecars) with a live view of the traffic.

#[derive(Debug, clap::Args)]
pub struct UpArgs {}

pub async fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("palisadectl up is not built yet")
}

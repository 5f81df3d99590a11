//! `palisadectl ca rotate`: make a new signing CA active now; the old one
//! stays in the trust bundle until the SVIDs it signed have expired.

use std::path::PathBuf;

use palisade_identity::client::AdminClient;

#[derive(Debug, clap::Subcommand)]
pub enum CaCmd {
    /// Rotate the signing CA.
    Rotate {
        /// The control plane's admin socket (default <state-dir>/admin.sock).
        #[arg(long, env = "PALISADE_ADMIN_SOCKET")]
        admin_socket: PathBuf,
    },
}

pub async fn run(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Rotate { admin_socket } => {
            let resp = AdminClient::new(&admin_socket).rotate_ca().await?;
            println!("active CA serial: {}", resp.active_ca_serial);
            println!("CAs in bundle:    {}", resp.bundle_size);
            Ok(())
        }
    }
}

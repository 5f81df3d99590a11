//! The Palisade path: client → outbound palisade-proxy → mTLS → inbound
//! palisade-proxy → server, with one HTTP rule allowing the client's `POST /echo`.
//! Runs only when asked for (`--palisade`) and the binary exists.

use super::{RunningPath, Setup, StartError};

pub fn start(setup: &Setup<'_>) -> Result<RunningPath, StartError> {
    if !setup.tools.palisade_enabled {
        return Err(StartError::Unavailable(
            "not requested: pass --palisade to include it".to_owned(),
        ));
    }
    let Some(bin) = &setup.tools.palisade else {
        return Err(StartError::Unavailable(
            "palisade-proxy binary not found: build it with \
             `cargo build --release -p palisade-proxy`, or pass --palisade-bin"
                .to_owned(),
        ));
    };
    // The proxy does not yet document a configuration format (proxy/README.md),
    // so there is nothing to write; what the bench needs from it is listed in
    // docs/bench.md, "Wiring in the Palisade path".
    Err(StartError::Unavailable(format!(
        "not available yet: {} has no documented configuration to start it with",
        bin.display()
    )))
}

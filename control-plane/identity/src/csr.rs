//! CSR making: a fresh key generated in memory and a PKCS#10 request that
//! only proves possession of it, because the control plane decides every name.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

/// A new ECDSA P-256 key and a PEM CSR signed by it, with no names.
pub fn new_key_and_csr() -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    Ok((key, csr))
}

//! Mutual TLS for node-to-node gossip links (rustls, ring provider).
//!
//! The same model as the config store's replication links (quicksilver-kv `ReplTls`): every node
//! holds a certificate signed by the cluster's CA and accepts only peers whose certificate that
//! CA signed, in both directions; a connecting node checks the accepting node's certificate
//! against the IP address it dialled.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::NodeError;

/// Certificates for mutual TLS between counter nodes. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

fn tls_error(path: &Path, err: &dyn std::fmt::Display) -> NodeError {
    NodeError::Tls(format!("{}: {err}", path.display()))
}

impl NodeTls {
    /// Load this node's certificate chain and private key, and the cluster CA (all PEM files).
    /// Errors name the file and the problem.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, NodeError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|err| tls_error(cert, &err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| tls_error(cert, &err))?;
        if chain.is_empty() {
            return Err(tls_error(cert, &"no certificate in the file"));
        }
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| tls_error(key, &err))?;
        let mut roots = rustls::RootCertStore::empty();
        for authority in CertificateDer::pem_file_iter(ca).map_err(|err| tls_error(ca, &err))? {
            roots
                .add(authority.map_err(|err| tls_error(ca, &err))?)
                .map_err(|err| tls_error(ca, &err))?;
        }
        if roots.is_empty() {
            return Err(tls_error(ca, &"no CA certificate in the file"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rustls_error = |err: rustls::Error| NodeError::Tls(err.to_string());
        // Accepting side: a client certificate signed by the cluster CA is required.
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|err| NodeError::Tls(err.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), private_key.clone_key())
            .map_err(|err| tls_error(cert, &err))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|err| tls_error(cert, &err))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

//! Throwaway certificate authorities for the mutual-TLS tests of every subsystem.

use std::path::{Path, PathBuf};

/// A self-signed CA made for one test; it signs node certificates for 127.0.0.1.
#[derive(Debug)]
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

/// The three PEM files a node is configured with: its certificate, its key, and the CA it
/// trusts for its peers.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate its peers must chain to (PEM).
    pub ca: PathBuf,
}

impl TestCa {
    /// A fresh CA whose certificate carries `name` as its common name.
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("CA parameters without names are valid");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("generate a CA key");
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Self { params, key, pem }
    }

    /// This CA's certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Write `NAME.pem` and `NAME.key` (a certificate for 127.0.0.1 this CA signed) and
    /// `NAME-ca.pem` (this CA) into `dir`: a node of this CA's fleet.
    pub fn issue(&self, dir: &Path, name: &str) -> TlsFiles {
        self.issue_trusting(dir, name, self)
    }

    /// Like [`issue`](Self::issue), but the node trusts `trusted` for its peers: an impostor's
    /// files when `trusted` is the real fleet's CA and `self` is not.
    pub fn issue_trusting(&self, dir: &Path, name: &str, trusted: &Self) -> TlsFiles {
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("an IP address is a valid subject name");
        let key = rcgen::KeyPair::generate().expect("generate a node key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign a node certificate");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.pem")),
        };
        for (path, text) in [
            (&files.cert, cert.pem()),
            (&files.key, key.serialize_pem()),
            (&files.ca, trusted.pem.clone()),
        ] {
            std::fs::write(path, text)
                .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        }
        files
    }
}

impl TlsFiles {
    /// The `tls_cert`, `tls_key` and `tls_ca` lines of a node config section.
    pub fn toml_keys(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }

    /// The `--tls-cert`, `--tls-key` and `--tls-ca` arguments of a `serve` subcommand.
    pub fn cli_args(&self) -> Vec<String> {
        [
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
            ("--tls-ca", &self.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }
}

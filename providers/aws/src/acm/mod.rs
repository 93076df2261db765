//! ACM: TLS certificates.

pub mod certificate;

pub use certificate::{Certificate, CertificateRef, CERTIFICATE};

use crate::kind::Kinds;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(CERTIFICATE.token, &certificate::CertificateKind);
}

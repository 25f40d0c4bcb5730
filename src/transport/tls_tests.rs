use super::*;

/// A CA and a leaf it signed, made here (nothing is committed).
struct Pki {
    dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A self-signed certificate for `name`, written as `<file>.crt/.key`.
    fn self_signed(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        (
            write(self.dir.path(), &format!("{file}.crt"), &cert.pem()),
            write(
                self.dir.path(),
                &format!("{file}.key"),
                &key.serialize_pem(),
            ),
        )
    }
}

#[test]
fn a_missing_or_oversized_file_is_reported_once_per_cause() {
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("server", "localhost");
    let files = TlsFiles {
        cert: cert.clone(),
        key,
        client_ca: None,
    };
    let tls = ServerTls::load(Port::Admin, files).expect("loads");
    let good = std::fs::read(&cert).expect("read");
    std::fs::remove_file(&cert).expect("remove");
    assert!(matches!(
        tls.reload(false),
        Reloaded::Refused(TlsError::Unreadable { .. })
    ));
    for _ in 0..5 {
        assert!(matches!(tls.reload(false), Reloaded::StillRefused));
    }
    // SIGHUP reports it again.
    assert!(matches!(tls.reload(true), Reloaded::Refused(_)));
    // Another cause is reported, once.
    let big = vec![b'x'; MAX_PEM_BYTES as usize + 1];
    std::fs::write(&cert, &big).expect("write");
    assert!(matches!(
        tls.reload(false),
        Reloaded::Refused(TlsError::TooLarge { .. })
    ));
    assert!(matches!(tls.reload(false), Reloaded::StillRefused));
    // Readable again: the next time it goes missing is news.
    std::fs::write(&cert, &good).expect("write");
    assert!(matches!(tls.reload(false), Reloaded::Unchanged));
    std::fs::remove_file(&cert).expect("remove");
    assert!(matches!(tls.reload(false), Reloaded::Refused(_)));
}

#[test]
fn a_broken_rotation_is_refused_and_the_old_config_stays() {
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("server", "localhost");
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    };
    let tls = ServerTls::load(Port::Xds, files).expect("loads");
    let before = tls.acceptor().config().clone();
    assert!(matches!(tls.reload(false), Reloaded::Unchanged));

    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    assert!(matches!(tls.reload(false), Reloaded::Refused(_)));
    assert!(
        Arc::ptr_eq(&before, tls.acceptor().config()),
        "old config kept"
    );
    // The same broken file is not reported again at every look.
    assert!(matches!(tls.reload(false), Reloaded::Unchanged));

    // A key that does not match its certificate is refused too.
    let (other_cert, _) = pki.self_signed("other", "localhost");
    std::fs::copy(&other_cert, &cert).expect("copy");
    assert!(matches!(
        tls.reload(false),
        Reloaded::Refused(TlsError::Refused(_))
    ));
    assert!(Arc::ptr_eq(&before, tls.acceptor().config()));

    let (new_cert, new_key) = pki.self_signed("new", "localhost");
    std::fs::copy(&new_cert, &cert).expect("copy");
    std::fs::copy(&new_key, &key).expect("copy");
    assert!(matches!(tls.reload(false), Reloaded::Rotated));
    assert!(
        !Arc::ptr_eq(&before, tls.acceptor().config()),
        "new config in use"
    );
}

#[test]
fn unusable_files_are_refused_at_start() {
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("server", "localhost");
    let missing = TlsFiles {
        cert: cert.clone(),
        key: pki.dir.path().join("nope.key"),
        client_ca: None,
    };
    assert!(matches!(
        ServerTls::load(Port::Admin, missing),
        Err(TlsError::Unreadable { .. })
    ));
    let swapped = TlsFiles {
        cert: key.clone(),
        key: cert.clone(),
        client_ca: None,
    };
    assert!(matches!(
        ServerTls::load(Port::Admin, swapped),
        Err(TlsError::BadPem { .. })
    ));
}

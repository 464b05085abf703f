//! PostgreSQL over TLS (rustls) against a real server started with `ssl=on` and a CA and
//! server certificate made here: the libpq `sslmode`s and their failures, on a server that
//! accepts TCP only over TLS.

use liege::store::postgres::{PostgresOptions, PostgresStore};
use liege::store::Store;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::{meta, own_server};

/// A CA, and a server certificate it signed for `localhost` only (not for `127.0.0.1`).
struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert, key)
}

fn pki() -> Pki {
    let (ca, ca_key) = ca("liege test CA");
    let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let key = KeyPair::generate().expect("key");
    let server = params.signed_by(&key, &ca, &ca_key).expect("signed");
    Pki {
        ca_pem: ca.pem(),
        server_pem: server.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

async fn open(url: &str) -> Result<PostgresStore, String> {
    PostgresStore::connect(url, PostgresOptions::for_tests())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_connect_verify_and_fail_with_their_cause() {
    let Some(mut pg) = own_server() else { return };
    let pki = pki();
    pg.enable_tls(&pki.server_pem, &pki.server_key_pem, true)
        .expect("TLS on");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write CA");
    let (wrong, _) = ca("some other CA");
    let wrong_file = dir.path().join("wrong.pem");
    std::fs::write(&wrong_file, wrong.pem()).expect("write wrong CA");
    let db = pg
        .create_database()
        .await
        .expect("database")
        .rsplit('/')
        .next()
        .expect("db name")
        .to_string();
    let port = pg.port();
    let url = |host: &str, params: &str| format!("postgres://postgres@{host}:{port}/{db}?{params}");
    let ca = ca_file.display();

    // The server takes TCP connections over TLS only.
    let e = open(&url("127.0.0.1", "sslmode=disable"))
        .await
        .expect_err("plaintext refused");
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");

    // Encrypted without checking the certificate (libpq's require), and the store works.
    let store = open(&url("127.0.0.1", "sslmode=require"))
        .await
        .expect("require connects");
    store.init_cluster(&meta(4)).await.expect("init");
    assert_eq!(store.directory().await.expect("read").partitions.len(), 4);
    drop(store);
    open(&url("127.0.0.1", "sslmode=prefer"))
        .await
        .expect("prefer uses TLS when offered");

    // verify-full: the chain and the host name.
    open(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-full connects to the name on the certificate");
    let e = open(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect_err("the certificate is not for 127.0.0.1");
    assert!(e.contains("not valid for name"), "the cause is named: {e}");

    // verify-ca: the chain only.
    open(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-ca ignores the name");
    let e = open(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", wrong_file.display()),
    ))
    .await
    .expect_err("a certificate from another CA");
    assert!(
        e.to_lowercase().contains("issuer"),
        "the cause is named: {e}"
    );

    // libpq: require with a root certificate checks the chain.
    let e = open(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", wrong_file.display()),
    ))
    .await
    .expect_err("require + sslrootcert checks the chain");
    assert!(e.to_lowercase().contains("issuer"), "{e}");

    // Configuration mistakes are clear too.
    let e = open(&url("localhost", "sslmode=verify-full"))
        .await
        .expect_err("no CA given");
    assert!(e.contains("sslrootcert"), "{e}");
    let e = open(&url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .expect_err("missing CA file");
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}

//! Test certificates, made with the `openssl` command: for the tests that put PostgreSQL
//! behind TLS (`pgconn_tls`, `tls`, `tls_daemon`).

use std::path::Path;

use super::openssl;

/// In `dir`: CAs `ca` and `other-ca` (`ca.crt`/`ca.key`, `other-ca.crt`/`other-ca.key`), and for
/// each `(name, sans)` of `servers` a certificate `name.crt`/`name.key` signed by `ca` with the
/// subject alternative names `sans` (e.g. "DNS:localhost,IP:127.0.0.1"). P-256 keys: quick to
/// make, and what rustls and PostgreSQL both take.
pub fn certificates(dir: &Path, servers: &[(&str, &str)]) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=walpoints test {ca}");
        let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(dir, &args);
    }
    for (name, sans) in servers {
        let subject = format!("/CN=walpoints test {name}");
        let (key, csr, ext, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.crt"),
        );
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &args);
        std::fs::write(dir.join(&ext), format!("subjectAltName = {sans}\n")).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
}

//! Certificates from `openssl` and a TLS server nobody here wrote (`openssl s_server -www`),
//! for the HTTPS and gRPCS probe tests: a CA, leaves valid for chosen dates and names, client
//! certificates, and a server that may require one.

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::postgres::run;
use crate::spawn::{self, Supervised};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Issued {
    /// The certificate's `notAfter` as `openssl x509 -enddate` prints it, in Unix seconds.
    ///
    /// # Errors
    /// When `openssl` or `date` fails.
    pub fn not_after(&self) -> Result<i64, Error> {
        let line = run(Command::new("openssl").args(["x509", "-noout", "-enddate", "-in"]).arg(&self.cert))?;
        let date = line.trim_start_matches("notAfter=");
        let seconds = run(Command::new("date").args(["-u", "-d", date, "+%s"]))?;
        seconds.trim().parse().map_err(|_| Error::Command { command: "date +%s".into(), output: seconds })
    }

    /// The certificate, PEM.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn pem(&self) -> Result<String, Error> {
        std::fs::read_to_string(&self.cert).map_err(Error::io("read a certificate"))
    }
}

/// A certificate authority in a scratch directory, removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// The CA's own certificate and key.
    pub ca: Issued,
    issued: u32,
}

impl Pki {
    /// A new CA (ECDSA P-256, valid 30 days).
    ///
    /// # Errors
    /// When `openssl` is missing or fails.
    pub fn new() -> Result<Self, Error> {
        let dir = spawn::scratch_dir("pki")?;
        let ca = Issued { cert: dir.join("ca.pem"), key: dir.join("ca.key") };
        // A name of its own: two test CAs must not look like one to a verifier.
        let subject = format!("/CN=Caracal Test CA {}", crate::unique_name("ca"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
            .arg("-subj")
            .arg(subject)
            .arg("-keyout")
            .arg(&ca.key)
            .arg("-out")
            .arg(&ca.cert))?;
        std::fs::write(dir.join("index.txt"), "").map_err(Error::io("write the CA database"))?;
        std::fs::write(dir.join("serial"), "1000\n").map_err(Error::io("write the CA serial"))?;
        let config = format!(
            "[ca]\ndefault_ca = here\n[here]\ndir = {}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir\n\
             serial = $dir/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
            dir.display()
        );
        std::fs::write(dir.join("ca.cnf"), config).map_err(Error::io("write the CA config"))?;
        Ok(Self { dir, ca, issued: 0 })
    }

    /// A server certificate for `names` (`DNS:localhost,IP:127.0.0.1`), valid from `not_before`
    /// to `not_after` (`YYYYMMDDHHMMSSZ`), or for `days` from now when `dates` is `None`.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn server(&mut self, names: &str, days: u32, dates: Option<(&str, &str)>) -> Result<Issued, Error> {
        self.issue("serverAuth", &format!("subjectAltName={names}\n"), days, dates)
    }

    /// A client certificate (for mTLS), valid `days`.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn client(&mut self, days: u32) -> Result<Issued, Error> {
        self.issue("clientAuth", "", days, None)
    }

    fn issue(
        &mut self,
        usage: &str,
        extensions: &str,
        days: u32,
        dates: Option<(&str, &str)>,
    ) -> Result<Issued, Error> {
        self.issued += 1;
        let stem = self.dir.join(format!("issued{}", self.issued));
        let issued = Issued { cert: stem.with_extension("pem"), key: stem.with_extension("key") };
        let csr = stem.with_extension("csr");
        let ext = stem.with_extension("ext");
        std::fs::write(&ext, format!("{extensions}extendedKeyUsage={usage}\n"))
            .map_err(Error::io("write extensions"))?;
        run(Command::new("openssl")
            .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&issued.key)
            .arg("-out")
            .arg(&csr))?;
        let mut sign = Command::new("openssl");
        sign.args(["ca", "-batch", "-notext", "-config"])
            .arg(self.dir.join("ca.cnf"))
            .arg("-cert")
            .arg(&self.ca.cert)
            .arg("-keyfile")
            .arg(&self.ca.key)
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&issued.cert)
            .arg("-extfile")
            .arg(&ext);
        match dates {
            Some((from, to)) => sign.args(["-startdate", from, "-enddate", to]),
            None => sign.args(["-days", &days.to_string()]),
        };
        run(&mut sign)?;
        Ok(issued)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `openssl s_server -www` on a free loopback port: answers any GET with `HTTP/1.0 200` and
/// closes the connection; with a client CA it requires a client certificate.
#[derive(Debug)]
pub struct TlsServer {
    port: u16,
    dir: PathBuf,
    process: Supervised,
}

impl TlsServer {
    /// Serves `certificate`; requires a client certificate issued by `client_ca` when given.
    ///
    /// # Errors
    /// When it does not accept connections within 10 s.
    pub fn start(certificate: &Issued, client_ca: Option<&Path>) -> Result<Self, Error> {
        let port = crate::free_port()?;
        let dir = spawn::scratch_dir("s_server")?;
        let log = dir.join("s_server.log");
        let out =
            OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the s_server log"))?;
        let err = out.try_clone().map_err(Error::io("open the s_server log"))?;
        let mut command = Command::new("openssl");
        command
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&certificate.cert)
            .arg("-key")
            .arg(&certificate.key);
        if let Some(ca) = client_ca {
            // -Verify (capital): a client certificate is required, not only asked for.
            command.args(["-Verify", "1", "-CAfile"]).arg(ca);
        }
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut process = Supervised::new(Signal::SIGTERM);
        process.started(spawn::spawn(command).map_err(Error::io("start openssl s_server"))?);
        let up = crate::poll::wait_for_blocking(START_TIMEOUT, Duration::from_millis(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            return Err(Error::NotReady { what: "openssl s_server".into(), seconds: START_TIMEOUT.as_secs(), log });
        }
        Ok(Self { port, dir, process })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

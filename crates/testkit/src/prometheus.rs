//! A real Prometheus (Debian's `prometheus`) on a free loopback port, with the configuration a
//! test gives (scrapes, rules, an Alertmanager to send to).

use std::path::PathBuf;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y prometheus";

/// A running Prometheus; killed and removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    dir: PathBuf,
    process: Supervised,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `config` (YAML) as `prometheus.yml`.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when it is not installed, or it is not ready within 20 s.
    pub fn start(config: &str) -> Result<Self, Error> {
        Self::start_with(config, &[])
    }

    /// As [`Prometheus::start`], with `files` (name, contents) written next to the
    /// configuration first (rule files, say).
    ///
    /// # Errors
    /// As [`Prometheus::start`].
    pub fn start_with(config: &str, files: &[(&str, &str)]) -> Result<Self, Error> {
        let binary = find_binary("prometheus", &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")], INSTALL)?;
        let dir = spawn::scratch_dir("prometheus")?;
        let port = crate::free_port()?;
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).map_err(Error::io("write a prometheus file"))?;
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).map_err(Error::io("write the prometheus config"))?;
        let args = [
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let process = crate::alertmanager::start_ready(&binary, &args, &dir, port, "prometheus")?;
        Ok(Self { port, dir, process })
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory its configuration and data live in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops it (SIGTERM).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

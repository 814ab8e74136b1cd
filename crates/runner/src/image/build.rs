//! Declarative image builds without Docker: a Dockerfile (what the SDK's `Image` builder
//! generates) run step by step on the [`ImageStore`] and the sandbox [`Runtime`].
//!
//! - `FROM`: any reference the store resolves (registry, `oci-archive:` & co); the control plane
//!   maps snapshot names to their images beforehand ([`BuildRequest::base_images`]).
//! - `RUN`: the command runs through the toolbox daemon in a temporary sandbox of the current
//!   image (as `USER`, default root, with `ENV`/`ARG`s, in `WORKDIR`); the sandbox's changes
//!   become a layer, exactly as a snapshot of a sandbox does.
//! - `COPY`/`ADD`: sources come from the uploaded context tars (`<org>/<hash>/context.tar` in
//!   object storage); the new layer is written directly, its parent directories carrying the
//!   image's own ownership and modes; `ADD` of a local tar (plain, gzip, zstd) extracts it.
//! - `ENV`, `WORKDIR`, `USER`, `ARG`, `LABEL`, `EXPOSE`, `ENTRYPOINT`, `CMD`: the config only
//!   (`WORKDIR` also creates a missing directory).
//!
//! Caching: every step has a key, the hash of its parent's key, its text, and for `COPY`/`ADD`
//! the bytes of the layer it makes (`RUN` keys include the `ARG`s, which only it sees). A step
//! whose key produced an image before reuses it (`build-cache/<key>.json`), so identical
//! (parent, instruction, context) never runs twice.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daytona_runtime::{DAEMON_PORT, NetworkPolicy, Runtime, RuntimeError, SandboxSpec};
use daytona_storage::{ObjectStorage, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::dockerfile::{self, CommandForm, CopyArgs, Instruction};
use super::{ImageError, ImageStore, RunConfig};

/// Lines of a failed `RUN`'s output quoted in the error.
const FAILED_OUTPUT_TAIL: usize = 20;

/// What to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRequest {
    /// Names the build's scratch space and temporary sandboxes in logs.
    pub id: String,
    pub dockerfile: String,
    /// Context tars, `<organization_id>/<hash>/context.tar` in object storage.
    pub context_hashes: Vec<String>,
    pub organization_id: String,
    /// `FROM` names the control plane resolved itself (snapshot names → image references).
    #[serde(default)]
    pub base_images: BTreeMap<String, String>,
    /// Resources of each `RUN`'s sandbox.
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    /// The whole build's limit.
    pub timeout: Duration,
}

/// Receives the build's log, line by line, as it happens.
pub trait BuildLog: Send + Sync {
    fn line(&self, line: &str);

    /// Lines `first..` of the log `origin` numbered (a remote runner's job, which reports them
    /// while it runs and all of them with its outcome): a log that keeps numbered lines stores
    /// each once.
    fn numbered(&self, origin: &str, first: usize, lines: &[String]) {
        let _ = (origin, first);
        for line in lines {
            self.line(line);
        }
    }
}

/// A finished build: a reference the store resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub reference: String,
    /// Steps that reused a cached image.
    pub cached_steps: usize,
    /// Steps that ran (`RUN`) or wrote a layer (`COPY`, `ADD`, a new `WORKDIR`).
    pub built_steps: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    #[error("step {step} ({text}): {reason}")]
    Step {
        step: usize,
        text: String,
        reason: String,
    },
    #[error("RUN {command} failed with exit code {exit_code}; last output:\n{tail}")]
    RunFailed {
        command: String,
        exit_code: i32,
        tail: String,
    },
    #[error("build context {hash}: {reason}")]
    Context { hash: String, reason: String },
    #[error("the build did not finish within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// Runs builds on one runner.
pub struct Builder {
    images: ImageStore,
    runtime: Arc<dyn Runtime>,
    storage: Option<ObjectStorage>,
    http: reqwest::Client,
}

/// Where the build is between steps.
struct State {
    /// Resolvable reference of the image so far.
    reference: String,
    /// The config the image so far will have.
    config: RunConfig,
    /// The config `reference` actually has.
    committed: RunConfig,
    key: String,
    args: BTreeMap<String, String>,
    /// `CMD` was set by this Dockerfile (an `ENTRYPOINT` then keeps it).
    cmd_set: bool,
}

impl State {
    fn advance(&mut self, parts: &[&[u8]]) {
        let mut hasher = Sha256::new();
        hasher.update(self.key.as_bytes());
        for part in parts {
            hasher.update(b"\0");
            hasher.update(part);
        }
        self.key = hex::encode(hasher.finalize());
    }

    /// Variables `$NAME` expands to: `ARG`s, then the image's `ENV` over them.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        vars.extend(env_pairs(&self.config));
        vars
    }

    fn workdir(&self) -> String {
        self.config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

fn env_pairs(config: &RunConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

fn set_env(config: &mut RunConfig, name: &str, value: &str) {
    let env = config.env.get_or_insert_with(Vec::new);
    let entry = format!("{name}={value}");
    match env
        .iter_mut()
        .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name)
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// `/a/./b/../c` → `/a/c` (purely lexical; `..` above the root stays at the root).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Shell-quotes a word for `/bin/sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Builder {
    pub fn new(
        images: ImageStore,
        runtime: Arc<dyn Runtime>,
        storage: Option<ObjectStorage>,
    ) -> Self {
        Builder {
            images,
            runtime,
            storage,
            // Only to the build sandbox's daemon on this host's bridge (`ADD <url>` is refused).
            http: daytona_outbound::Outbound::local_client_builder()
                .build()
                .expect("a client without proxies or extra roots always builds"),
        }
    }

    /// Builds `req`, logging to `log`; the scratch space is removed however it ends.
    pub async fn build(
        &self,
        req: &BuildRequest,
        log: &dyn BuildLog,
    ) -> Result<BuiltImage, BuildError> {
        let scratch = self.images.build_scratch(&req.id);
        let started = Instant::now();
        let result = tokio::time::timeout(req.timeout, self.run(req, log, &scratch))
            .await
            .unwrap_or(Err(BuildError::Timeout(req.timeout)));
        if let Err(e) = fs::remove_dir_all(&scratch)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(dir = %scratch.display(), error = %e, "could not remove build scratch space");
        }
        match &result {
            Ok(built) => info!(
                build = %req.id, reference = %built.reference, cached = built.cached_steps,
                built = built.built_steps, elapsed_ms = started.elapsed().as_millis() as u64,
                "image built"
            ),
            Err(e) => warn!(build = %req.id, error = %e, "image build failed"),
        }
        result
    }

    async fn run(
        &self,
        req: &BuildRequest,
        log: &dyn BuildLog,
        scratch: &Path,
    ) -> Result<BuiltImage, BuildError> {
        let steps = dockerfile::parse(&req.dockerfile)?;
        let total = steps.len();
        let deadline = Instant::now() + req.timeout;
        let mut state: Option<State> = None;
        let mut pre_from_args = BTreeMap::new();
        let mut context: Option<PathBuf> = None;
        let (mut cached_steps, mut built_steps) = (0, 0);
        for (i, step) in steps.iter().enumerate() {
            let n = i + 1;
            log.line(&format!("Step {n}/{total} : {}", step.text));
            let fail = |reason: String| BuildError::Step {
                step: n,
                text: step.text.clone(),
                reason,
            };
            let Some(state) = state.as_mut() else {
                match &step.instruction {
                    Instruction::Arg { name, default } => {
                        let value = default
                            .as_deref()
                            .map(|d| dockerfile::expand(d, &pre_from_args, true))
                            .transpose()
                            .map_err(fail)?
                            .unwrap_or_default();
                        pre_from_args.insert(name.clone(), value);
                    }
                    Instruction::From { image } => {
                        let name = dockerfile::expand(image, &pre_from_args, true).map_err(fail)?;
                        state = Some(self.from(req, &name, log).await?);
                    }
                    _ => unreachable!("the parser puts only ARG before FROM"),
                }
                continue;
            };
            let vars = state.vars();
            let expand = |s: &str| dockerfile::expand(s, &vars, true).map_err(fail);
            match &step.instruction {
                Instruction::From { .. } => unreachable!("the parser refuses a second FROM"),
                Instruction::Arg { name, default } => {
                    let value = match default {
                        Some(d) => expand(d)?,
                        None => pre_from_args.get(name).cloned().unwrap_or_default(),
                    };
                    state.args.insert(name.clone(), value);
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Env(pairs) => {
                    for (name, raw) in pairs {
                        let value = dockerfile::expand(raw, &state.vars(), true).map_err(fail)?;
                        set_env(&mut state.config, name, &value);
                    }
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Label(pairs) => {
                    let labels = state.config.labels.get_or_insert_with(BTreeMap::new);
                    for (name, raw) in pairs {
                        labels.insert(name.clone(), expand(raw)?);
                    }
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::User(user) => {
                    state.config.user = Some(dockerfile::expand_words(user, &vars).map_err(fail)?);
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Expose(ports) => {
                    let exposed = state.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                    for port in ports {
                        let port = expand(port)?;
                        let port = if port.contains('/') {
                            port
                        } else {
                            format!("{port}/tcp")
                        };
                        exposed.insert(port, serde_json::json!({}));
                    }
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Entrypoint(form) => {
                    state.config.entrypoint = Some(form.argv());
                    if !state.cmd_set {
                        state.config.cmd = None;
                    }
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Cmd(form) => {
                    state.config.cmd = Some(form.argv());
                    state.cmd_set = true;
                    state.advance(&[step.text.as_bytes()]);
                }
                Instruction::Workdir(path) => {
                    let path = dockerfile::expand_words(path, &vars).map_err(fail)?;
                    let path = if path.starts_with('/') {
                        normalize(&path)
                    } else {
                        normalize(&format!("{}/{path}", state.workdir()))
                    };
                    state.config.working_dir = Some(path.clone());
                    state.advance(&[step.text.as_bytes()]);
                    // A missing directory is created, as Docker does, in a layer of its own.
                    let layers = self.images.resolve(&state.reference).await?.layers;
                    let rel = path.trim_start_matches('/').to_owned();
                    if !rel.is_empty() && lookup(&layers, &rel).is_none() {
                        let out = scratch.join(format!("step-{n}.tar"));
                        blocking(move || {
                            let mut layer = LayerWriter::create(&out, layers)?;
                            layer.ensure_dir(&rel, None)?;
                            layer.finish()
                        })
                        .await?;
                        if self
                            .commit_or_reuse(state, &scratch.join(format!("step-{n}.tar")), log)
                            .await?
                        {
                            cached_steps += 1;
                        } else {
                            built_steps += 1;
                        }
                    }
                }
                Instruction::Run(form) => {
                    let mut key_parts: Vec<Vec<u8>> = vec![step.text.clone().into_bytes()];
                    key_parts.extend(
                        state
                            .args
                            .iter()
                            .map(|(k, v)| format!("{k}={v}").into_bytes()),
                    );
                    let refs: Vec<&[u8]> = key_parts.iter().map(Vec::as_slice).collect();
                    state.advance(&refs);
                    if self.reuse(state, log).await? {
                        cached_steps += 1;
                        continue;
                    }
                    let committed = self
                        .run_step(req, state, form, &step.text, log, deadline)
                        .await?;
                    self.images.record_step(&state.key, &committed).await?;
                    state.reference = committed;
                    state.committed = state.config.clone();
                    built_steps += 1;
                }
                Instruction::Copy(args) | Instruction::Add(args) => {
                    let extract = matches!(step.instruction, Instruction::Add(_));
                    let context = match &context {
                        Some(dir) => dir.clone(),
                        None => {
                            let dir = self.fetch_context(req, scratch, log).await?;
                            context = Some(dir.clone());
                            dir
                        }
                    };
                    let args = CopyArgs {
                        sources: args
                            .sources
                            .iter()
                            .map(|s| expand(s))
                            .collect::<Result<_, _>>()?,
                        dest: expand(&args.dest)?,
                        chown: args.chown.as_deref().map(expand).transpose()?,
                        chmod: args.chmod,
                    };
                    let layers = self.images.resolve(&state.reference).await?.layers;
                    let out = scratch.join(format!("step-{n}.tar"));
                    let workdir = state.workdir();
                    let written = out.clone();
                    blocking(move || {
                        copy_layer(&written, &context, layers, &args, &workdir, extract)
                    })
                    .await
                    .map_err(|e| match e {
                        BuildError::Io { context, source } => fail(format!("{context}: {source}")),
                        e => e,
                    })?;
                    let digest = {
                        let out = out.clone();
                        blocking(move || file_sha256(&out)).await?
                    };
                    state.advance(&[step.text.as_bytes(), digest.as_bytes()]);
                    if self.commit_or_reuse(state, &out, log).await? {
                        cached_steps += 1;
                    } else {
                        built_steps += 1;
                    }
                }
            }
        }
        let mut state = state.expect("the parser requires a FROM");
        if state.config != state.committed {
            // Config-only steps after the last layer: one more image with the final config.
            state.advance(&[b"config"]);
            if !self.reuse(&mut state, log).await? {
                let committed = self
                    .images
                    .commit_with(&state.reference, None, Some(state.config.clone()))
                    .await?;
                self.images
                    .record_step(&state.key, &committed.reference)
                    .await?;
                state.reference = committed.reference;
            }
        }
        log.line(&format!(
            "Successfully built {} ({cached_steps} cached, {built_steps} built)",
            state.reference
        ));
        Ok(BuiltImage {
            reference: state.reference,
            cached_steps,
            built_steps,
        })
    }

    async fn from(
        &self,
        req: &BuildRequest,
        name: &str,
        log: &dyn BuildLog,
    ) -> Result<State, BuildError> {
        let reference = req
            .base_images
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned());
        if reference != name {
            log.line(&format!(" ---> {name} is {reference}"));
        }
        let image = self.images.resolve(&reference).await?;
        let config = self.images.config_of(&image).await?;
        log.line(&format!(" ---> {}", image.digest));
        let mut state = State {
            reference,
            committed: config.clone(),
            config,
            key: String::new(),
            args: BTreeMap::new(),
            cmd_set: false,
        };
        state.advance(&[b"FROM", image.digest.as_bytes()]);
        Ok(state)
    }

    /// Moves to the image an earlier build made for this key, if it still resolves.
    async fn reuse(&self, state: &mut State, log: &dyn BuildLog) -> Result<bool, BuildError> {
        let Some(reference) = self.images.cached_step(&state.key).await? else {
            return Ok(false);
        };
        match self.images.resolve(&reference).await {
            Ok(_) => {
                log.line(" ---> Using cache");
                state.reference = reference;
                state.committed = state.config.clone();
                Ok(true)
            }
            Err(e) => {
                warn!(key = %state.key, reference, error = %e, "cached build step unusable; rebuilding");
                Ok(false)
            }
        }
    }

    /// Commits the layer tar `layer` on the current image unless the cache has the result.
    /// Returns whether the cache had it.
    async fn commit_or_reuse(
        &self,
        state: &mut State,
        layer: &Path,
        log: &dyn BuildLog,
    ) -> Result<bool, BuildError> {
        if self.reuse(state, log).await? {
            return Ok(true);
        }
        let file = File::open(layer).map_err(io_err(format!("open {}", layer.display())))?;
        let committed = self
            .images
            .commit_with(
                &state.reference,
                Some(Box::new(io::BufReader::new(file))),
                Some(state.config.clone()),
            )
            .await?;
        log.line(&format!(" ---> {}", committed.digest));
        self.images
            .record_step(&state.key, &committed.reference)
            .await?;
        state.reference = committed.reference;
        state.committed = state.config.clone();
        Ok(false)
    }

    /// Downloads and unpacks every context tar into `<scratch>/context`.
    async fn fetch_context(
        &self,
        req: &BuildRequest,
        scratch: &Path,
        log: &dyn BuildLog,
    ) -> Result<PathBuf, BuildError> {
        let dir = scratch.join("context");
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        for hash in &req.context_hashes {
            let context_err = |reason: String| BuildError::Context {
                hash: hash.clone(),
                reason,
            };
            if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(context_err("not a context hash".into()));
            }
            let storage = self.storage.as_ref().ok_or_else(|| {
                context_err("this runner has no object storage to read contexts from".into())
            })?;
            let key = format!("{}/{hash}/context.tar", req.organization_id);
            let reader = storage.reader(&key).await.map_err(|e| match e {
                StorageError::NotFound(_) => context_err(format!(
                    "{key} is not in object storage (upload it through push access first)"
                )),
                e => e.into(),
            })?;
            let target = dir.clone();
            let owned = hash.clone();
            blocking(move || {
                tar::Archive::new(reader)
                    .unpack(&target)
                    .map_err(|e| BuildError::Context {
                        hash: owned,
                        reason: format!("cannot unpack it: {e}"),
                    })
            })
            .await?;
            log.line(&format!(" ---> context {hash} unpacked"));
        }
        Ok(dir)
    }

    /// Runs `form` in a temporary sandbox of the current image and commits its changes.
    async fn run_step(
        &self,
        req: &BuildRequest,
        state: &State,
        form: &CommandForm,
        text: &str,
        log: &dyn BuildLog,
        deadline: Instant,
    ) -> Result<String, BuildError> {
        let pinned = self.images.resolve_pinned(&state.reference).await?;
        let mut env: BTreeMap<String, String> = state.args.clone();
        env.extend(env_pairs(&state.config));
        let id = uuid::Uuid::new_v4().to_string();
        let spec = SandboxSpec {
            id: id.clone(),
            image_layers: pinned.image.layers.clone(),
            user: state
                .config
                .user
                .clone()
                .filter(|u| !u.is_empty())
                .map(|u| u.split(':').next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| "root".into()),
            env,
            workdir: Some(state.workdir()),
            cpu: req.cpu,
            memory_gib: req.memory_gib,
            disk_gib: req.disk_gib,
            network: NetworkPolicy::default(),
            mounts: Vec::new(),
        };
        log.line(&format!(" ---> Running in {id}"));
        let status = self.runtime.create(&spec).await;
        drop(pinned);
        let result = match status {
            Ok(status) => {
                self.exec_and_commit(state, &id, status.ip, form, text, log, deadline)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = self.runtime.destroy(&id).await {
            warn!(sandbox = %id, error = %e, "could not remove a build sandbox");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_and_commit(
        &self,
        state: &State,
        id: &str,
        ip: Option<std::net::Ipv4Addr>,
        form: &CommandForm,
        text: &str,
        log: &dyn BuildLog,
        deadline: Instant,
    ) -> Result<String, BuildError> {
        let ip =
            ip.ok_or_else(|| RuntimeError::Other(format!("build sandbox {id} has no address")))?;
        let script = match form {
            CommandForm::Shell(command) => format!("/bin/sh -c {}", sh_quote(command)),
            CommandForm::Exec(args) => args
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Executed {
            exit_code: i32,
            result: String,
        }
        let response = self
            .http
            .post(format!("http://{ip}:{DAEMON_PORT}/process/execute"))
            .json(&serde_json::json!({"command": script, "timeout": remaining}))
            .send()
            .await
            .map_err(|e| RuntimeError::Other(format!("build sandbox {id}: {e}")))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| RuntimeError::Other(format!("build sandbox {id}: {e}")))?;
        if !status.is_success() {
            return Err(RuntimeError::Other(format!(
                "build sandbox {id}: the daemon answered {status}: {body}"
            ))
            .into());
        }
        let executed: Executed = serde_json::from_str(&body).map_err(|e| {
            RuntimeError::Other(format!("build sandbox {id}: bad answer {e}: {body}"))
        })?;
        for line in executed.result.lines() {
            log.line(line);
        }
        if executed.exit_code != 0 {
            let lines: Vec<&str> = executed.result.lines().collect();
            let tail = lines[lines.len().saturating_sub(FAILED_OUTPUT_TAIL)..].join("\n");
            let command = text
                .split_once(char::is_whitespace)
                .map_or(text, |(_, rest)| rest.trim())
                .to_owned();
            return Err(BuildError::RunFailed {
                command,
                exit_code: executed.exit_code,
                tail,
            });
        }
        let changes = self.runtime.export_changes(id).await?;
        let committed = self
            .images
            .commit_with(&state.reference, Some(changes), Some(state.config.clone()))
            .await?;
        log.line(&format!(" ---> {}", committed.digest));
        Ok(committed.reference)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Io {
            context: "build task".into(),
            source: io::Error::other(e.to_string()),
        })?
}

fn file_sha256(path: &Path) -> Result<String, BuildError> {
    let mut file = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Metadata of `rel` (relative to the root) in the image whose layers are `layers` (bottom
/// first): the top-most layer that has it wins; an overlay whiteout there means it is gone.
fn lookup(layers: &[PathBuf], rel: &str) -> Option<fs::Metadata> {
    for layer in layers.iter().rev() {
        if let Ok(meta) = fs::symlink_metadata(layer.join(rel)) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                return None;
            }
            return Some(meta);
        }
    }
    None
}

/// `user[:group]` as ids: numbers as they are, names from the image's `/etc/passwd` and
/// `/etc/group`; without a group, the user's primary group.
fn resolve_owner(layers: &[PathBuf], spec: &str) -> Result<(u64, u64), String> {
    let read = |file: &str| -> String {
        layers
            .iter()
            .rev()
            .find_map(|l| fs::read_to_string(l.join(file)).ok())
            .unwrap_or_default()
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read("etc/passwd");
    let entry = |name: &str| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == name)
    };
    let (uid, primary_gid) = match user.parse::<u64>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let f = entry(user).ok_or_else(|| format!("--chown: no user {user} in the image"))?;
            (
                f[2].parse()
                    .map_err(|_| format!("bad /etc/passwd entry for {user}"))?,
                f[3].parse()
                    .map_err(|_| format!("bad /etc/passwd entry for {user}"))?,
            )
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => read("etc/group")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("--chown: no group {g} in the image"))?,
        },
    };
    Ok((uid, gid))
}

/// Writes a layer tar whose parent directories copy the image's metadata.
struct LayerWriter {
    tar: tar::Builder<io::BufWriter<File>>,
    layers: Vec<PathBuf>,
    /// Directories already in the tar.
    written: std::collections::HashSet<String>,
}

impl LayerWriter {
    fn create(path: &Path, layers: Vec<PathBuf>) -> Result<Self, BuildError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        }
        let file = File::create(path).map_err(io_err(format!("create {}", path.display())))?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(LayerWriter {
            tar,
            layers,
            written: Default::default(),
        })
    }

    fn header(
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        mtime: u64,
        size: u64,
    ) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_mtime(mtime);
        header.set_size(size);
        header
    }

    /// Writes `rel` and its missing ancestors as directories: ones the image has keep its
    /// metadata, new ones are root's 0755 (`owner` for `rel` itself when given).
    fn ensure_dir(&mut self, rel: &str, owner: Option<(u64, u64)>) -> Result<(), BuildError> {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            return Ok(());
        }
        let mut prefix = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.written.contains(&prefix) {
                continue;
            }
            let is_target = i + 1 == parts.len();
            let header = match lookup(&self.layers, &prefix) {
                Some(meta) if meta.is_dir() => Self::header(
                    tar::EntryType::Directory,
                    meta.mode() & 0o7777,
                    if is_target {
                        owner.unwrap_or((meta.uid().into(), meta.gid().into()))
                    } else {
                        (meta.uid().into(), meta.gid().into())
                    },
                    meta.mtime().max(0) as u64,
                    0,
                ),
                _ => Self::header(
                    tar::EntryType::Directory,
                    0o755,
                    if is_target {
                        owner.unwrap_or((0, 0))
                    } else {
                        (0, 0)
                    },
                    0,
                    0,
                ),
            };
            let mut header = header;
            self.tar
                .append_data(&mut header, format!("{prefix}/"), io::empty())
                .map_err(io_err(format!("write {prefix}/ into the layer")))?;
            self.written.insert(prefix.clone());
        }
        Ok(())
    }

    fn parent_of(rel: &str) -> &str {
        rel.rsplit_once('/').map_or("", |(p, _)| p)
    }

    /// Copies the host file or tree `source` to `rel` in the layer.
    fn copy_tree(
        &mut self,
        source: &Path,
        rel: &str,
        owner: Option<(u64, u64)>,
        chmod: Option<u32>,
    ) -> Result<(), BuildError> {
        let meta =
            fs::symlink_metadata(source).map_err(io_err(format!("stat {}", source.display())))?;
        let ids = owner.unwrap_or((0, 0));
        let mtime = meta.mtime().max(0) as u64;
        if meta.is_dir() {
            let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            // A directory's mtime is when the context was unpacked, not part of its content:
            // it would make every build's layer (and cache key) differ.
            let mut header = Self::header(tar::EntryType::Directory, mode, ids, 0, 0);
            if !self.written.contains(rel) {
                self.tar
                    .append_data(&mut header, format!("{rel}/"), io::empty())
                    .map_err(io_err(format!("write {rel}/ into the layer")))?;
                self.written.insert(rel.to_owned());
            }
            let mut entries: Vec<_> = fs::read_dir(source)
                .map_err(io_err(format!("list {}", source.display())))?
                .collect::<Result<_, _>>()
                .map_err(io_err(format!("list {}", source.display())))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                self.copy_tree(&entry.path(), &format!("{rel}/{name}"), owner, chmod)?;
            }
        } else if meta.file_type().is_symlink() {
            let target =
                fs::read_link(source).map_err(io_err(format!("read link {}", source.display())))?;
            let mut header = Self::header(tar::EntryType::Symlink, 0o777, ids, mtime, 0);
            self.tar
                .append_link(&mut header, rel, &target)
                .map_err(io_err(format!("write {rel} into the layer")))?;
        } else if meta.is_file() {
            let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            let mut header = Self::header(tar::EntryType::Regular, mode, ids, mtime, meta.len());
            let file = File::open(source).map_err(io_err(format!("open {}", source.display())))?;
            self.tar
                .append_data(&mut header, rel, file)
                .map_err(io_err(format!("write {rel} into the layer")))?;
        }
        Ok(())
    }

    /// Extracts the (possibly compressed) tar `archive` under the directory `rel`.
    fn extract(&mut self, archive: Box<dyn Read>, rel: &str) -> Result<(), BuildError> {
        let mut archive = tar::Archive::new(archive);
        let entries = archive.entries().map_err(io_err("read the archive"))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("read the archive"))?;
            let path = entry
                .path()
                .map_err(io_err("read the archive"))?
                .into_owned();
            if path.components().any(|c| matches!(c, Component::ParentDir)) {
                continue;
            }
            let inner = path
                .to_string_lossy()
                .trim_matches('/')
                .trim_start_matches("./")
                .to_owned();
            if inner.is_empty() || inner == "." {
                continue;
            }
            let target = if rel.is_empty() {
                inner
            } else {
                format!("{rel}/{inner}")
            };
            self.ensure_dir(Self::parent_of(&target), None)?;
            let mut header = entry.header().clone();
            if header.entry_type().is_dir() {
                if self.written.contains(&target) {
                    continue;
                }
                self.written.insert(target.clone());
                self.tar
                    .append_data(&mut header, format!("{target}/"), io::empty())
                    .map_err(io_err(format!("write {target}/ into the layer")))?;
            } else if header.entry_type().is_symlink() || header.entry_type().is_hard_link() {
                let link = entry
                    .link_name()
                    .map_err(io_err("read the archive"))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let link = if header.entry_type().is_hard_link() {
                    // Hard links name archive paths, which moved under `rel`.
                    PathBuf::from(format!(
                        "{rel}/{}",
                        link.to_string_lossy().trim_start_matches("./")
                    ))
                } else {
                    link
                };
                self.tar
                    .append_link(&mut header, &target, &link)
                    .map_err(io_err(format!("write {target} into the layer")))?;
            } else {
                self.tar
                    .append_data(&mut header, &target, &mut entry)
                    .map_err(io_err(format!("write {target} into the layer")))?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), BuildError> {
        let out = self.tar.into_inner().map_err(io_err("finish the layer"))?;
        out.into_inner()
            .map_err(|e| BuildError::Io {
                context: "flush the layer".into(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io_err("sync the layer"))
    }
}

/// A source path of `COPY`/`ADD` inside the context directory (never outside it).
fn context_source(context: &Path, source: &str) -> Result<PathBuf, String> {
    let rel = Path::new(source.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{source}: paths outside the build context are not allowed"
        ));
    }
    let path = context.join(rel);
    let real =
        fs::canonicalize(&path).map_err(|_| format!("{source}: not found in the build context"))?;
    let root = fs::canonicalize(context).map_err(|e| format!("build context: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!("{source}: resolves outside the build context"));
    }
    Ok(path)
}

/// Compression of a local archive `ADD` extracts, or `None` when it is no tar.
fn open_archive(path: &Path) -> io::Result<Option<Box<dyn Read>>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 512];
    let n = file.read(&mut magic)?;
    file.seek(io::SeekFrom::Start(0))?;
    let magic = &magic[..n];
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Some(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::new(file),
        )))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Box::new(zstd::Decoder::new(file)?))
    } else if n >= 262 && &magic[257..262] == b"ustar" {
        Some(Box::new(io::BufReader::new(file)))
    } else {
        None
    })
}

/// Writes the layer of a `COPY` (or, with `extract`, an `ADD`) to `out`.
fn copy_layer(
    out: &Path,
    context: &Path,
    layers: Vec<PathBuf>,
    args: &CopyArgs,
    workdir: &str,
    extract: bool,
) -> Result<(), BuildError> {
    let bad = |reason: String| BuildError::Io {
        context: "COPY".into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, reason),
    };
    let owner = args
        .chown
        .as_deref()
        .map(|spec| resolve_owner(&layers, spec))
        .transpose()
        .map_err(bad)?;
    let dest = if args.dest.starts_with('/') {
        args.dest.clone()
    } else {
        format!("{workdir}/{}", args.dest)
    };
    let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.");
    let dest = normalize(&dest);
    let dest_rel = dest.trim_start_matches('/').to_owned();
    let dest_exists_as_dir = lookup(&layers, &dest_rel).is_some_and(|m| m.is_dir());
    if args.sources.len() > 1 && !dest_is_dir && !dest_exists_as_dir {
        return Err(bad(format!(
            "with several sources the destination must be a directory ending in /, not {}",
            args.dest
        )));
    }
    if args.sources.iter().any(|s| s.contains("://")) {
        return Err(bad("remote (URL) sources are not supported".into()));
    }
    let mut layer = LayerWriter::create(out, layers)?;
    for source in &args.sources {
        let path = context_source(context, source).map_err(bad)?;
        let meta = fs::metadata(&path).map_err(io_err(format!("stat {source}")))?;
        if meta.is_dir() {
            layer.ensure_dir(&dest_rel, owner)?;
            let mut entries: Vec<_> = fs::read_dir(&path)
                .map_err(io_err(format!("list {source}")))?
                .collect::<Result<_, _>>()
                .map_err(io_err(format!("list {source}")))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name();
                let rel = format!("{dest_rel}/{}", name.to_string_lossy());
                layer.copy_tree(
                    &entry.path(),
                    rel.trim_start_matches('/'),
                    owner,
                    args.chmod,
                )?;
            }
            continue;
        }
        if extract
            && let Some(archive) = open_archive(&path).map_err(io_err(format!("open {source}")))?
        {
            layer.ensure_dir(&dest_rel, None)?;
            layer.extract(archive, &dest_rel)?;
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = if dest_is_dir || dest_exists_as_dir {
            format!("{dest_rel}/{name}")
                .trim_start_matches('/')
                .to_owned()
        } else {
            dest_rel.clone()
        };
        layer.ensure_dir(LayerWriter::parent_of(&target), None)?;
        layer.copy_tree(&path, &target, owner, args.chmod)?;
    }
    layer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_path: &Path) -> Vec<(String, u32, u64, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(File::open(tar_path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    data,
                )
            })
            .collect()
    }

    /// An image of one layer with `/etc/passwd`, and `/home/daytona` owned by 1000.
    fn image(dir: &Path) -> Vec<PathBuf> {
        let layer = dir.join("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(
            layer.join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\ndaytona:x:1000:1001::/home/daytona:/bin/bash\n",
        )
        .unwrap();
        fs::write(layer.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        fs::create_dir_all(layer.join("home/daytona")).unwrap();
        std::os::unix::fs::chown(layer.join("home/daytona"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(
            layer.join("home/daytona"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        vec![layer]
    }

    #[test]
    fn copy_keeps_the_parents_of_the_image_and_owns_files_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let layers = image(dir.path());
        let context = dir.path().join("context");
        fs::create_dir_all(context.join("tmp/src/sub")).unwrap();
        fs::write(context.join("tmp/file.txt"), "hello").unwrap();
        fs::write(context.join("tmp/src/sub/a.py"), "print(1)").unwrap();
        let out = dir.path().join("layer.tar");
        let args = CopyArgs {
            sources: vec!["tmp/file.txt".into()],
            dest: "/home/daytona/file.txt".into(),
            chown: None,
            chmod: None,
        };
        copy_layer(&out, &context, layers.clone(), &args, "/", false).unwrap();
        let got = entries(&out);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["home/", "home/daytona/", "home/daytona/file.txt"]);
        // The image's own directory keeps its owner and mode.
        assert_eq!((got[1].1, got[1].2, got[1].3), (0o750, 1000, 1001));
        assert_eq!(
            (got[2].2, got[2].3, got[2].4.as_slice()),
            (0, 0, &b"hello"[..])
        );

        // A directory into a new, relative destination with --chown by name.
        let args = CopyArgs {
            sources: vec!["tmp/src".into()],
            dest: "app/".into(),
            chown: Some("daytona:staff".into()),
            chmod: None,
        };
        copy_layer(&out, &context, layers.clone(), &args, "/srv", false).unwrap();
        let got = entries(&out);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["srv/", "srv/app/", "srv/app/sub/", "srv/app/sub/a.py"]
        );
        assert_eq!((got[0].2, got[1].2, got[1].3), (0, 1000, 50));
        assert_eq!((got[3].2, got[3].3), (1000, 50));

        // Escapes and missing sources are named.
        for (source, needle) in [
            ("../etc/passwd", "outside the build context"),
            ("tmp/nope", "not found"),
        ] {
            let args = CopyArgs {
                sources: vec![source.into()],
                dest: "/x".into(),
                chown: None,
                chmod: None,
            };
            let err = copy_layer(&out, &context, layers.clone(), &args, "/", false).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let args = CopyArgs {
            sources: vec!["tmp/file.txt".into()],
            dest: "/x".into(),
            chown: Some("nobody".into()),
            chmod: None,
        };
        let err = copy_layer(&out, &context, layers, &args, "/", false).unwrap_err();
        assert!(err.to_string().contains("no user nobody"), "{err}");
    }

    #[test]
    fn add_extracts_local_tars() {
        let dir = tempfile::tempdir().unwrap();
        let layers = image(dir.path());
        let context = dir.path().join("context");
        fs::create_dir_all(&context).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            File::create(context.join("bundle.tar.gz")).unwrap(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o640);
        header.set_uid(7);
        header.set_gid(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, "pkg/data.txt", &b"abc"[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
        let out = dir.path().join("layer.tar");
        let args = CopyArgs {
            sources: vec!["bundle.tar.gz".into()],
            dest: "/opt".into(),
            chown: None,
            chmod: None,
        };
        copy_layer(&out, &context, layers.clone(), &args, "/", true).unwrap();
        let got = entries(&out);
        let names: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["opt/", "opt/pkg/", "opt/pkg/data.txt"]);
        assert_eq!(
            (got[2].1, got[2].2, got[2].4.as_slice()),
            (0o640, 7, &b"abc"[..])
        );
        // COPY copies the archive itself.
        copy_layer(&out, &context, layers, &args, "/", false).unwrap();
        let names: Vec<_> = entries(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["opt"]);
    }

    #[test]
    fn env_and_paths() {
        let mut config = RunConfig {
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            ..Default::default()
        };
        set_env(&mut config, "A", "2");
        set_env(&mut config, "B", "x y");
        assert_eq!(config.env.unwrap(), ["PATH=/bin", "A=2", "B=x y"]);
        assert_eq!(normalize("/a/./b/../c/"), "/a/c");
        assert_eq!(normalize("/../x"), "/x");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

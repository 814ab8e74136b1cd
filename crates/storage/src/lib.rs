//! Object storage for the server: sandbox archives today, volumes and build contexts later.
//!
//! [`ObjectStorage`] wraps an `object_store` backend: a local directory (the embedded default,
//! `<DAYTONA_DATA_DIR>/objects`) or an S3-compatible bucket (`S3_ENDPOINT` & co). Large objects are
//! always streamed (multipart uploads, chunked downloads), never held in memory whole. Blocking
//! producers and consumers (compressors, file copies in `spawn_blocking`) plug in through
//! [`ObjectStorage::put_from_writer`] and [`ObjectStorage::get_into_reader`].

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::mpsc;

pub mod push_access;
pub mod s3;

pub use push_access::{CredentialAuthority, CredentialError, PushCredentials};

/// Bytes a blocking writer hands to the uploader at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between a blocking side and the async side (bounds memory use).
const CHANNEL_DEPTH: usize = 8;
/// Size of one multipart part (S3 requires at least 5 MiB for all but the last).
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded concurrently.
const PART_CONCURRENCY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("object storage configuration: {0}")]
    Config(String),
    #[error("object {key}: {}", with_causes(source))]
    Backend {
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// The blocking producer or consumer failed.
    #[error("object {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// An error and the causes under it (an S3 client error alone says "error sending request"; the
/// cause says a certificate is not trusted, or the proxy refused). Causes whose text is already
/// in the message are left out.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = e.source();
    }
    message
}

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http(s)://host:port`; path-style requests are used (MinIO, s3s, Ceph).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Proxies and extra trusted CAs on the way to the endpoint.
    pub outbound: daytona_outbound::Outbound,
}

/// How long an S3 connection may take to open, and a response to go silent.
const S3_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const S3_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Hands `object_store` our HTTP client, so S3 calls honour the deployment's proxies and CAs
/// (its own client would read neither).
#[derive(Debug)]
struct OutboundConnector(reqwest::Client);

impl object_store::client::HttpConnector for OutboundConnector {
    fn connect(
        &self,
        _: &object_store::client::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        Ok(object_store::client::HttpClient::new(self.0.clone()))
    }
}

/// What storage knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    /// The backend's entity tag (what S3 clients see as `ETag`).
    pub e_tag: Option<String>,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(meta: object_store::ObjectMeta) -> Self {
        ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified: meta.last_modified.into(),
            e_tag: meta.e_tag,
        }
    }
}

/// A bucket of objects addressed by `/`-separated keys. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

fn object_path(key: &str) -> Result<ObjectPath> {
    let invalid = |reason: String| StorageError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() || key.ends_with('/') {
        return Err(invalid(
            "a key names an object: not empty, no trailing '/'".into(),
        ));
    }
    ObjectPath::parse(key).map_err(|e| invalid(e.to_string()))
}

impl ObjectStorage {
    /// Objects as files under `root` (created if missing). Uploads land in a temporary file
    /// that is renamed into place when complete, so readers never see half an object.
    pub fn local(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| StorageError::Config(format!("cannot create {}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| StorageError::Config(format!("{}: {e}", root.display())))?
            .with_automatic_cleanup(true);
        Ok(ObjectStorage {
            store: Arc::new(store),
            description: format!("local object storage at {}", root.display()),
        })
    }

    /// Objects in an S3-compatible bucket.
    pub fn s3(settings: &S3Settings) -> Result<Self> {
        let http = settings
            .outbound
            .client_builder()
            .connect_timeout(S3_CONNECT_TIMEOUT)
            .read_timeout(S3_READ_TIMEOUT)
            .build()
            .map_err(|e| StorageError::Config(format!("S3 HTTP client: {e}")))?;
        let store = AmazonS3Builder::new()
            .with_http_connector(OutboundConnector(http))
            .with_endpoint(settings.endpoint.trim_end_matches('/'))
            .with_allow_http(settings.endpoint.starts_with("http://"))
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_access_key_id(&settings.access_key)
            .with_secret_access_key(&settings.secret_key)
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|e| StorageError::Config(format!("S3 bucket {}: {e}", settings.bucket)))?;
        Ok(ObjectStorage {
            store: Arc::new(store),
            description: format!("S3 bucket {} at {}", settings.bucket, settings.endpoint),
        })
    }

    fn backend(key: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
        move |source| match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_owned()),
            source => StorageError::Backend {
                key: key.to_owned(),
                source,
            },
        }
    }

    /// Stores a small object in one request.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = object_path(key)?;
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(Self::backend(key))?;
        Ok(())
    }

    /// Stores everything `stream` yields as one object (multipart upload); returns its size.
    /// If the stream fails, the upload is aborted and no object appears.
    pub async fn put_stream(
        &self,
        key: &str,
        stream: impl Stream<Item = io::Result<Bytes>>,
    ) -> Result<u64> {
        let path = object_path(key)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(Self::backend(key))?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut stream = std::pin::pin!(stream);
        let mut size = 0u64;
        loop {
            let chunk = match stream.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(source)) => {
                    let _ = upload.abort().await;
                    return Err(StorageError::Io {
                        key: key.to_owned(),
                        source,
                    });
                }
            };
            if let Err(e) = upload.wait_for_capacity(PART_CONCURRENCY).await {
                let _ = upload.abort().await;
                return Err(Self::backend(key)(e));
            }
            size += chunk.len() as u64;
            upload.put(chunk);
        }
        upload.finish().await.map_err(Self::backend(key))?;
        Ok(size)
    }

    /// Stores what `produce` writes, run on a blocking thread (e.g. a compressor reading a
    /// file), streamed to storage as it is written. Returns the object's size.
    pub async fn put_from_writer<F>(&self, key: &str, produce: F) -> Result<u64>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
        let producer = tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx: tx.clone(),
                buffer: BytesMut::with_capacity(CHUNK),
            };
            let result = produce(&mut writer).and_then(|()| writer.flush());
            if let Err(e) = &result {
                // Makes the upload fail (and abort) instead of completing a truncated object.
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let stream = tokio_stream_from(rx);
        let uploaded = self.put_stream(key, stream).await;
        let produced = producer.await.map_err(|e| StorageError::Io {
            key: key.to_owned(),
            source: io::Error::other(format!("producer task failed: {e}")),
        })?;
        match (uploaded, produced) {
            (Ok(size), Ok(())) => Ok(size),
            // The upload failed first and the producer only saw the channel close.
            (Err(e), Err(p)) if p.kind() == io::ErrorKind::BrokenPipe => Err(e),
            // The producer's own error says more than "stream failed".
            (_, Err(source)) => Err(StorageError::Io {
                key: key.to_owned(),
                source,
            }),
            (Err(e), Ok(())) => Err(e),
        }
    }

    /// The object's bytes as a stream of chunks.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>> {
        let path = object_path(key)?;
        let result = self.store.get(&path).await.map_err(Self::backend(key))?;
        let owned = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |source| StorageError::Backend {
                key: owned.clone(),
                source,
            })
            .boxed())
    }

    /// The whole object in memory: only for small objects.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let path = object_path(key)?;
        let result = self.store.get(&path).await.map_err(Self::backend(key))?;
        result.bytes().await.map_err(Self::backend(key))
    }

    /// A blocking reader over the object, downloaded as it is read (use it on a blocking
    /// thread). Dropping it stops the download.
    pub async fn reader(&self, key: &str) -> Result<ObjectReader> {
        let mut stream = self.get_stream(key).await?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
        let forward = tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(io::Error::other);
                let failed = chunk.is_err();
                // The reader was dropped: nothing more to do.
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(ObjectReader {
            inner: ChannelReader {
                rx,
                current: Bytes::new(),
            },
            forward,
        })
    }

    /// Runs `consume` on a blocking thread with a [`reader`](Self::reader) over the object.
    pub async fn get_into_reader<F, T>(&self, key: &str, consume: F) -> Result<T>
    where
        F: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let mut reader = self.reader(key).await?;
        let consumed = tokio::task::spawn_blocking(move || consume(&mut reader)).await;
        match consumed {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StorageError::Io {
                key: key.to_owned(),
                source,
            }),
            Err(e) => Err(StorageError::Io {
                key: key.to_owned(),
                source: io::Error::other(format!("consumer task failed: {e}")),
            }),
        }
    }

    /// The object's metadata, or `None` if there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = object_path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Self::backend(key)(source)),
        }
    }

    /// Deletes the object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = object_path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Self::backend(key)(source)),
        }
    }

    /// Every object whose key lies under `prefix` (a `/`-separated directory, may be empty).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() {
            None
        } else {
            Some(object_path(prefix)?)
        };
        self.store
            .list(path.as_ref())
            .map_ok(ObjectInfo::from)
            .try_collect()
            .await
            .map_err(Self::backend(prefix))
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
) -> impl Stream<Item = io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `Write` on a blocking thread, feeding an async consumer in chunks of [`CHUNK`].
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= CHUNK {
            self.send()?;
            self.buffer.reserve(CHUNK);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A blocking reader over an object being downloaded (see [`ObjectStorage::reader`]).
pub struct ObjectReader {
    inner: ChannelReader,
    forward: tokio::task::JoinHandle<()>,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// `Read` on a blocking thread over chunks an async task downloads.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests;

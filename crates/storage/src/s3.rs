//! The embedded S3 endpoint: one bucket, path-style, SigV4, served over an [`ObjectStorage`]
//! so that S3 clients (the SDK's obstore upload of build contexts, boto, the AWS CLI) work
//! against `daytona server` without MinIO. Only temporary credentials from a
//! [`CredentialAuthority`] are accepted, and each request may touch only the keys under its
//! organization's prefix (`<organizationId>/…`).
//!
//! Operations: HeadBucket, PutObject, GetObject, HeadObject, DeleteObject(s), ListObjectsV2 and
//! multipart uploads (parts are staged as objects under `_multipart/<upload id>/`, a prefix no
//! organization can name, and concatenated into the object on completion).

use std::io;
use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rand::RngExt;
pub use s3s::HttpError;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CreateMultipartUploadInput,
    CreateMultipartUploadOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput,
    DeleteObjectsOutput, DeletedObject, ETag, GetObjectInput, GetObjectOutput, HeadBucketInput,
    HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListObjectsV2Input, ListObjectsV2Output,
    Object, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp, UploadPartInput,
    UploadPartOutput,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

use crate::push_access::{CredentialAuthority, CredentialError};
use crate::{ObjectStorage, StorageError};

/// Where multipart parts wait for their upload's completion.
const MULTIPART_PREFIX: &str = "_multipart";
/// ListObjectsV2's default and largest page.
const MAX_KEYS: usize = 1000;

/// The S3 service (a hyper/tower service) for `bucket` over `storage`.
pub fn service(
    storage: ObjectStorage,
    bucket: impl Into<String>,
    authority: CredentialAuthority,
) -> S3Service {
    let endpoint = EmbeddedS3 {
        storage,
        bucket: bucket.into(),
        authority: authority.clone(),
    };
    let mut builder = S3ServiceBuilder::new(endpoint);
    builder.set_auth(TemporaryAuth(authority));
    builder.build()
}

/// Every access key has a secret derived from it; whether the key is any good is decided by
/// its session token ([`EmbeddedS3::authorize`]).
struct TemporaryAuth(CredentialAuthority);

#[async_trait::async_trait]
impl S3Auth for TemporaryAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        Ok(SecretKey::from(self.0.secret_for(access_key)))
    }
}

struct EmbeddedS3 {
    storage: ObjectStorage,
    bucket: String,
    authority: CredentialAuthority,
}

fn storage_error(e: StorageError) -> S3Error {
    match e {
        StorageError::NotFound(key) => s3_error!(NoSuchKey, "no object {key}"),
        StorageError::InvalidKey { key, reason } => {
            s3_error!(InvalidArgument, "invalid key {key:?}: {reason}")
        }
        other => S3Error::internal_error(other),
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// Request bodies as the storage layer's stream of chunks.
fn body_stream(
    body: Option<StreamingBlob>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::iter(body)
        .flatten()
        .map_err(io::Error::other)
}

impl EmbeddedS3 {
    /// The organization the request acts for, once its session token checks out and `key`
    /// (an object key or listing prefix) lies under that organization's prefix.
    fn authorize<T>(&self, req: &S3Request<T>, bucket: &str, key: &str) -> S3Result<String> {
        let org = self.organization(req)?;
        if bucket != self.bucket {
            return Err(s3_error!(NoSuchBucket, "no bucket {bucket}"));
        }
        if !key.starts_with(&format!("{org}/")) {
            return Err(s3_error!(
                AccessDenied,
                "these credentials only reach keys under {org}/, not {key:?}"
            ));
        }
        Ok(org)
    }

    /// The organization whose temporary credentials signed the request.
    fn organization<T>(&self, req: &S3Request<T>) -> S3Result<String> {
        let credentials = req
            .credentials
            .as_ref()
            .ok_or_else(|| s3_error!(AccessDenied, "anonymous requests are not allowed"))?;
        let token = req
            .headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                req.uri.query().and_then(|q| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.eq_ignore_ascii_case("X-Amz-Security-Token")
                            .then(|| percent_decode(v))
                    })
                })
            });
        let token = token.ok_or_else(|| {
            s3_error!(
                AccessDenied,
                "{}",
                CredentialError::MissingToken.to_string()
            )
        })?;
        let org = self
            .authority
            .verify(&credentials.access_key, &token, SystemTime::now())
            .map_err(|e| match e {
                CredentialError::Expired => s3_error!(ExpiredToken, "{e}"),
                e => s3_error!(AccessDenied, "{e}"),
            })?;
        Ok(org)
    }

    fn part_key(upload_id: &str, part: i32) -> String {
        format!("{MULTIPART_PREFIX}/{upload_id}/{part:05}")
    }

    fn upload_record(upload_id: &str) -> String {
        format!("{MULTIPART_PREFIX}/{upload_id}/target")
    }

    /// Checks that `upload_id` is an upload of `key` (ids are random hex, never paths).
    async fn check_upload(&self, upload_id: &str, key: &str) -> S3Result<()> {
        let no_upload = || s3_error!(NoSuchUpload, "no multipart upload {upload_id}");
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_upload());
        }
        match self
            .storage
            .get_bytes(&Self::upload_record(upload_id))
            .await
        {
            Ok(target) if target.as_ref() == key.as_bytes() => Ok(()),
            Ok(_) | Err(StorageError::NotFound(_)) => Err(no_upload()),
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn discard_upload(&self, upload_id: &str) -> S3Result<()> {
        let staged = self
            .storage
            .list(&format!("{MULTIPART_PREFIX}/{upload_id}"))
            .await
            .map_err(storage_error)?;
        for object in staged {
            self.storage
                .delete(&object.key)
                .await
                .map_err(storage_error)?;
        }
        Ok(())
    }

    async fn etag_of(&self, key: &str) -> S3Result<Option<ETag>> {
        Ok(self
            .storage
            .head(key)
            .await
            .map_err(storage_error)?
            .and_then(|info| info.e_tag)
            .map(ETag::Strong))
    }
}

/// `%XX` escapes of a query value (a session token in a presigned URL).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait::async_trait]
impl S3 for EmbeddedS3 {
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.organization(&req)?;
        let bucket = req.input.bucket;
        if bucket != self.bucket {
            return Err(s3_error!(NoSuchBucket, "no bucket {bucket}"));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        let key = req.input.key;
        let size = self
            .storage
            .put_stream(&key, body_stream(req.input.body))
            .await
            .map_err(storage_error)?;
        tracing::debug!(key, size, "S3 object stored");
        Ok(S3Response::new(PutObjectOutput {
            e_tag: self.etag_of(&key).await?,
            size: Some(size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        if req.input.range.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "ranged GETs are not supported by this endpoint"
            ));
        }
        let key = req.input.key;
        let info = self
            .storage
            .head(&key)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| s3_error!(NoSuchKey, "no object {key}"))?;
        let stream = self.storage.get_stream(&key).await.map_err(storage_error)?;
        // The storage stream is Send but not Sync, which S3 bodies must be: a channel is both.
        let (tx, rx) = futures::channel::mpsc::channel::<io::Result<Bytes>>(4);
        tokio::spawn(async move {
            let mut tx = tx;
            let mut stream = stream;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(io::Error::other);
                let failed = chunk.is_err();
                if futures::SinkExt::send(&mut tx, chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(rx)),
            content_length: Some(info.size as i64),
            e_tag: info.e_tag.map(ETag::Strong),
            last_modified: Some(timestamp(info.last_modified)),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        let key = req.input.key;
        let info = self
            .storage
            .head(&key)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| s3_error!(NoSuchKey, "no object {key}"))?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(info.size as i64),
            e_tag: info.e_tag.map(ETag::Strong),
            last_modified: Some(timestamp(info.last_modified)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        self.storage
            .delete(&req.input.key)
            .await
            .map_err(storage_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let org = self.organization(&req)?;
        if req.input.bucket != self.bucket {
            return Err(s3_error!(NoSuchBucket, "no bucket {}", req.input.bucket));
        }
        let own = format!("{org}/");
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in req.input.delete.objects {
            if !object.key.starts_with(&own) {
                errors.push(s3s::dto::Error {
                    code: Some("AccessDenied".into()),
                    message: Some(format!("these credentials only reach keys under {own}")),
                    key: Some(object.key),
                    ..Default::default()
                });
                continue;
            }
            match self.storage.delete(&object.key).await {
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some("InternalError".into()),
                    message: Some(e.to_string()),
                    key: Some(object.key),
                    ..Default::default()
                }),
            }
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        self.authorize(&req, &req.input.bucket, &prefix)?;
        let input = req.input;
        // Storage lists whole directories; S3 prefixes may end mid-name.
        let dir = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut objects: Vec<_> = self
            .storage
            .list(dir)
            .await
            .map_err(storage_error)?
            .into_iter()
            .filter(|o| o.key.starts_with(&prefix))
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let after = input
            .continuation_token
            .clone()
            .or(input.start_after.clone());
        let max_keys = input
            .max_keys
            .map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let mut contents = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last = None;
        let mut truncated = false;
        for object in objects {
            if after
                .as_ref()
                .is_some_and(|a| object.key.as_str() <= a.as_str())
            {
                continue;
            }
            let common = delimiter.as_ref().and_then(|d| {
                let rest = &object.key[prefix.len()..];
                rest.find(d.as_str())
                    .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
            });
            if let Some(common) = &common
                && prefixes.last() == Some(common)
            {
                last = Some(object.key.clone());
                continue;
            }
            if contents.len() + prefixes.len() == max_keys {
                truncated = true;
                break;
            }
            last = Some(object.key.clone());
            match common {
                Some(common) => prefixes.push(common),
                None => contents.push(Object {
                    key: Some(object.key),
                    size: Some(object.size as i64),
                    e_tag: object.e_tag.map(ETag::Strong),
                    last_modified: Some(timestamp(object.last_modified)),
                    ..Default::default()
                }),
            }
        }
        let key_count = (contents.len() + prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { last } else { None },
            contents: Some(contents),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        let upload_id = hex::encode(rand::rng().random::<[u8; 16]>());
        self.storage
            .put(
                &Self::upload_record(&upload_id),
                Bytes::from(req.input.key.clone()),
            )
            .await
            .map_err(storage_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(req.input.bucket),
            key: Some(req.input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        let input = req.input;
        if !(1..=10_000).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "partNumber must be from 1 to 10000, not {}",
                input.part_number
            ));
        }
        self.check_upload(&input.upload_id, &input.key).await?;
        let part = Self::part_key(&input.upload_id, input.part_number);
        self.storage
            .put_stream(&part, body_stream(input.body))
            .await
            .map_err(storage_error)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: self.etag_of(&part).await?,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        let input = req.input;
        self.check_upload(&input.upload_id, &input.key).await?;
        let mut numbers: Vec<i32> = input
            .multipart_upload
            .and_then(|u| u.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                p.part_number
                    .ok_or_else(|| s3_error!(InvalidPart, "a part without a PartNumber"))
            })
            .collect::<S3Result<_>>()?;
        if numbers.is_empty() {
            return Err(s3_error!(InvalidRequest, "the upload lists no parts"));
        }
        if numbers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(s3_error!(
                InvalidPartOrder,
                "parts must be listed in ascending order"
            ));
        }
        for &n in &numbers {
            if self
                .storage
                .head(&Self::part_key(&input.upload_id, n))
                .await
                .map_err(storage_error)?
                .is_none()
            {
                return Err(s3_error!(InvalidPart, "part {n} was not uploaded"));
            }
        }
        numbers.dedup();
        let parts = numbers
            .into_iter()
            .map(|n| Self::part_key(&input.upload_id, n))
            .collect();
        let joined = concatenated(self.storage.clone(), parts);
        self.storage
            .put_stream(&input.key, joined)
            .await
            .map_err(storage_error)?;
        self.discard_upload(&input.upload_id).await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            e_tag: self.etag_of(&input.key).await?,
            key: Some(input.key),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.authorize(&req, &req.input.bucket, &req.input.key)?;
        self.check_upload(&req.input.upload_id, &req.input.key)
            .await?;
        self.discard_upload(&req.input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

/// The objects `keys`, one after the other, as one stream.
fn concatenated(
    storage: ObjectStorage,
    keys: Vec<String>,
) -> futures::stream::BoxStream<'static, io::Result<Bytes>> {
    futures::stream::unfold(
        (storage, keys.into_iter(), None),
        |(storage, mut keys, current)| async move {
            let mut current: Option<
                futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
            > = current;
            loop {
                if let Some(stream) = current.as_mut()
                    && let Some(chunk) = stream.next().await
                {
                    let chunk = chunk.map_err(io::Error::other);
                    return Some((chunk, (storage, keys, current)));
                }
                let key = keys.next()?;
                match storage.get_stream(&key).await {
                    Ok(stream) => current = Some(stream),
                    Err(e) => return Some((Err(io::Error::other(e)), (storage, keys, None))),
                }
            }
        },
    )
    .boxed()
}

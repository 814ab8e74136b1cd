//! The embedded S3 endpoint through a real S3 client (object_store's SigV4, path-style, with
//! session tokens), as the SDK's obstore upload uses it.

use std::time::Duration;

use axum::error_handling::HandleError;
use axum::http::StatusCode;
use daytona_storage::{CredentialAuthority, ObjectStorage, PushCredentials};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "daytona";

async fn serve(storage: ObjectStorage, authority: CredentialAuthority) -> String {
    let service = daytona_storage::s3::service(storage, BUCKET, authority);
    let service = HandleError::new(service, |_e: daytona_storage::s3::HttpError| async {
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let app = axum::Router::new().fallback_service(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client(endpoint: &str, creds: &PushCredentials) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(&creds.access_key)
        .with_secret_access_key(&creds.secret)
        .with_token(&creds.session_token)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap()
}

fn is_denied(e: &object_store::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("403") || text.contains("AccessDenied") || text.contains("ExpiredToken")
}

#[tokio::test]
async fn scoped_temporary_credentials_put_get_list_and_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    let authority = CredentialAuthority::new(b"test secret");
    let endpoint = serve(storage.clone(), authority.clone()).await;
    let creds = authority.issue("org-a", Duration::from_secs(60));
    let s3 = client(&endpoint, &creds);

    let key = Path::from("org-a/abc/context.tar");
    s3.put(&key, PutPayload::from_static(b"hello tar"))
        .await
        .unwrap();
    assert_eq!(s3.head(&key).await.unwrap().size, 9);
    let got = s3.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"hello tar");
    // The server's own storage sees the same key (what the runner reads).
    assert_eq!(
        storage
            .get_bytes("org-a/abc/context.tar")
            .await
            .unwrap()
            .as_ref(),
        b"hello tar"
    );

    // Multipart: three parts of 5 MiB, 5 MiB and 1 KiB.
    let big: Vec<u8> = (0..(10 << 20) + 1024).map(|i| (i % 251) as u8).collect();
    let big_key = Path::from("org-a/big/context.tar");
    let mut upload = object_store::WriteMultipart::new_with_chunk_size(
        s3.put_multipart(&big_key).await.unwrap(),
        5 << 20,
    );
    upload.write(&big);
    upload.finish().await.unwrap();
    let got = s3.get(&big_key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got.as_ref() == big.as_slice(), "multipart object differs");
    // Staged parts are gone once the upload completed.
    assert!(storage.list("_multipart").await.unwrap().is_empty());

    let listed: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(s3.list(Some(&Path::from("org-a"))))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
    assert_eq!(listed, ["org-a/abc/context.tar", "org-a/big/context.tar"]);

    s3.delete(&key).await.unwrap();
    assert!(matches!(
        s3.head(&key).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // Another organization's prefix, and listing outside the own prefix, are refused.
    let err = s3
        .put(
            &Path::from("org-b/abc/context.tar"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    assert!(
        storage
            .head("org-b/abc/context.tar")
            .await
            .unwrap()
            .is_none()
    );
    let err = s3
        .get(&Path::from("org-b/abc/context.tar"))
        .await
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
}

#[tokio::test]
async fn expired_forged_and_tokenless_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    let authority = CredentialAuthority::new(b"test secret");
    let endpoint = serve(storage.clone(), authority.clone()).await;
    let key = Path::from("org-a/abc/context.tar");

    let expired = authority.issue("org-a", Duration::ZERO);
    let err = client(&endpoint, &expired)
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("ExpiredToken"), "{err:?}");

    // Credentials of another server (another ENCRYPTION_KEY).
    let foreign = CredentialAuthority::new(b"other").issue("org-a", Duration::from_secs(60));
    let err = client(&endpoint, &foreign)
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");

    // A valid key and secret without the session token.
    let tokenless = authority.issue("org-a", Duration::from_secs(60));
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(&tokenless.access_key)
        .with_secret_access_key(&tokenless.secret)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let err = s3
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    assert!(
        storage
            .head("org-a/abc/context.tar")
            .await
            .unwrap()
            .is_none()
    );
}

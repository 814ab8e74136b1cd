use super::*;

fn storage() -> (tempfile::TempDir, ObjectStorage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(&dir.path().join("objects")).unwrap();
    (dir, storage)
}

/// Deterministic, incompressible-looking test data.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_round_trip_and_are_listed_by_prefix() {
    let (_dir, s) = storage();
    s.put("a/one", Bytes::from_static(b"1")).await.unwrap();
    s.put("a/two", Bytes::from_static(b"22")).await.unwrap();
    s.put("b/three", Bytes::from_static(b"333")).await.unwrap();
    assert_eq!(&s.get_bytes("a/two").await.unwrap()[..], b"22");
    let head = s.head("b/three").await.unwrap().unwrap();
    assert_eq!((head.key.as_str(), head.size), ("b/three", 3));
    assert_eq!(s.head("b/none").await.unwrap(), None);
    let mut keys: Vec<_> = s
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["a/one", "a/two"]);
    assert_eq!(s.list("").await.unwrap().len(), 3);

    s.delete("a/one").await.unwrap();
    s.delete("a/one").await.unwrap(); // idempotent
    assert_eq!(s.head("a/one").await.unwrap(), None);
    assert!(matches!(
        s.get_bytes("a/one").await,
        Err(StorageError::NotFound(k)) if k == "a/one"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_with_the_reason() {
    let (_dir, s) = storage();
    for key in ["", "a/", "a//b", "../x"] {
        let err = s.put(key, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::InvalidKey { key: k, .. } if k == key),
            "{key:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_uploads_span_several_parts_and_read_back_exactly() {
    let (_dir, s) = storage();
    // More than two parts, not a multiple of the chunk size.
    let data = pattern(2 * PART_SIZE + 12_345);
    let expected = data.clone();
    let size = s
        .put_from_writer("big/object", move |w| {
            // Odd write sizes exercise the chunking.
            for piece in data.chunks(70_001) {
                w.write_all(piece)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(size, expected.len() as u64);
    assert_eq!(
        s.head("big/object").await.unwrap().unwrap().size,
        size,
        "head reports the stored size"
    );
    let read = s
        .get_into_reader("big/object", |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .unwrap();
    assert!(read == expected, "downloaded bytes differ");

    let mut streamed = Vec::new();
    let mut stream = s.get_stream("big/object").await.unwrap();
    while let Some(chunk) = stream.next().await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert!(streamed == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_producer_leaves_no_object() {
    let (dir, s) = storage();
    let err = s
        .put_from_writer("broken", |w| {
            w.write_all(&pattern(3 * CHUNK))?;
            Err(io::Error::other("disk exploded"))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disk exploded"), "{err}");
    assert_eq!(s.head("broken").await.unwrap(), None);
    // No temporary upload files are left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_may_stop_early_and_errors_name_the_key() {
    let (_dir, s) = storage();
    s.put_from_writer("x", |w| w.write_all(&pattern(4 * CHUNK)))
        .await
        .unwrap();
    let first = s
        .get_into_reader("x", |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b)?;
            Ok(b)
        })
        .await
        .unwrap();
    assert_eq!(first.to_vec(), pattern(10));
    let err = s.get_into_reader("missing", |_| Ok(())).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound(k) if k == "missing"));
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_an_error_naming_the_cause() {
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = ObjectStorage::s3(&S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        bucket: "unreachable".into(),
        access_key: "key".into(),
        secret_key: "secret".into(),
        outbound: daytona_outbound::Outbound::direct(),
    })
    .unwrap();
    let error = storage
        .put("k/v", Bytes::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    // Not only the client's "error sending request": what went wrong under it.
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

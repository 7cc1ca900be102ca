//! Running out of disk, on `MemoryDevice` with a capacity: the next segment
//! is allocated ahead of need (the spare), a full disk refuses the spare
//! without harming the log, and a restart on a full disk still opens it.

use super::tests::{SMALL, assert_records, open, run, sync_frame};
use super::*;

const SPARE: &str = "wal-next.spare";

#[test]
fn a_rotation_renames_the_spare_into_place() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        sync_frame(&mut wal, &[100]).await;
        wal.prepare_spare().await.expect("spare");
        assert!(wal.has_spare() && device.file_names().contains(&SPARE.to_owned()));
        let used = device.used_bytes();
        let mut expected = Vec::new();
        while wal.segment_names().len() < 2 {
            expected.extend(sync_frame(&mut wal, &[200_000]).await);
        }
        assert!(!wal.has_spare(), "the rotation took the spare");
        assert!(!device.file_names().contains(&SPARE.to_owned()));
        assert_eq!(
            device.used_bytes(),
            used,
            "the new segment is the spare's space, nothing more"
        );
        wal.prepare_spare().await.expect("a new spare");
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records[1..], &expected);
    });
}

#[test]
fn a_full_disk_refuses_the_spare_and_leaves_the_log_usable() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = sync_frame(&mut wal, &[100]).await;
        device.set_capacity(Some(device.used_bytes() + SMALL.segment_bytes / 2));
        let used = device.used_bytes();
        match wal.prepare_spare().await {
            Err(WalError::NoSpace { .. }) => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(!wal.has_spare());
        assert_eq!(device.used_bytes(), used, "a refused spare takes nothing");
        // What still fits in the active segment is written as usual.
        let room = wal.room_in_active_segment();
        assert!(room > 500_000, "{room}");
        expected.extend(sync_frame(&mut wal, &[300_000]).await);
        assert!(wal.room_in_active_segment() < room - 300_000);
        // Space comes back: the spare is made, and the log goes on.
        device.set_capacity(None);
        wal.prepare_spare().await.expect("spare");
        while wal.segment_names().len() < 2 {
            expected.extend(sync_frame(&mut wal, &[200_000]).await);
        }
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

#[test]
fn a_restart_keeps_an_unused_spare_and_removes_one_a_rotation_wrote_into() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let expected = sync_frame(&mut wal, &[100]).await;
        wal.prepare_spare().await.expect("spare");
        drop(wal);
        let used = device.used_bytes();
        // On a disk with no room for another segment, the restart keeps it.
        device.set_capacity(Some(used));
        let (wal, records) = open(&device).await;
        assert_records(&records, &expected);
        assert!(wal.has_spare(), "the spare of the last run is taken over");
        assert_eq!(device.used_bytes(), used);
        drop(wal);
        // A spare whose header block was written was being renamed into
        // place by a rotation that never finished: not reused.
        device.set_capacity(None);
        device.flip_bit(SPARE, 0, 0).expect("flip");
        let (wal, records) = open(&device).await;
        assert_records(&records, &expected);
        assert!(!wal.has_spare());
        assert!(!device.file_names().contains(&SPARE.to_owned()));
    });
}

#[test]
fn a_restart_on_a_full_disk_opens_a_short_active_segment_as_it_is() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let expected = sync_frame(&mut wal, &[1000, 2000]).await;
        drop(wal);
        let name = device.file_names()[0].clone();
        // A segment whose preallocation was cut short, on a full disk.
        device.truncate_file(&name, 64 * 1024).expect("truncate");
        device.set_capacity(Some(device.used_bytes()));
        let (mut wal, records) = open(&device).await;
        assert_records(&records, &expected);
        assert!(wal.room_in_active_segment() < 64 * 1024);
        assert!(matches!(
            wal.prepare_spare().await,
            Err(WalError::NoSpace { .. })
        ));
    });
}

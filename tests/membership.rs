//! Membership changes on real `metastore` processes over loopback, with
//! the `etcd-client` crate: a member removed through a follower stops and
//! stays out; a member added as a learner joins a running cluster from
//! its peers (`--initial-cluster-state existing`), catches up, is
//! promoted, takes writes with an old member down, and restarts as a
//! member of the cluster; a member moved with MemberUpdate is reached at
//! its new peer URLs; and the clients' history stays linearizable while
//! members join and leave under load.

mod common;

use std::time::{Duration, Instant};

use common::MetastoreServer;
use common::cluster::{
    Cluster, FAST, MEMBERS, current_thread_runtime, member_id_of, settled_lead_member,
};
use common::workload::{Shared, check_histories, start_clients, stop_clients};
use etcd_client::{Client, GetOptions, MemberAddOptions};

/// Retries `call` until it succeeds or `limit` passes (the cluster may be
/// electing, or a member catching up).
async fn eventually<T, F>(what: &str, limit: Duration, mut call: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => assert!(Instant::now() < deadline, "{what}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A put through `endpoint`, retried until it succeeds or `limit` passes.
async fn put_eventually(endpoint: &str, (key, value): (&str, &str), limit: Duration) {
    let client = Client::connect([endpoint], None).await.expect("connect");
    eventually(&format!("a put of {key} through {endpoint}"), limit, || {
        let mut client = client.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        async move { client.put(key, value, None).await }
    })
    .await;
}

fn status_message(result: Result<impl std::fmt::Debug, etcd_client::Error>) -> String {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => status.message().to_owned(),
        other => panic!("expected an error status: {other:?}"),
    }
}

#[test]
fn a_learner_joins_catches_up_is_promoted_and_takes_writes() {
    // Snapshots every 50 entries: the learner catches up from the
    // leaders' snapshots, which must name it (written after its addition).
    let mut cluster = Cluster::start_with_flags(FAST, &["--snapshot-count", "50"]);
    let runtime = current_thread_runtime();
    let endpoints = cluster.endpoints();
    let lead = runtime.block_on(settled_lead_member(&endpoints, Duration::from_secs(20)));
    let follower = (lead + 1) % MEMBERS;
    let joining = cluster.new_member("m3");
    let peer_url = cluster.members[joining].peer_url();
    let new_id = runtime.block_on(async {
        let mut client = Client::connect([&endpoints[follower]], None)
            .await
            .expect("connect");
        for index in 0..300 {
            client
                .put(format!("key-{index:03}"), format!("value-{index}"), None)
                .await
                .expect("put");
        }
        let added = client
            .member_add(
                [peer_url.as_str()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .expect("member add through a follower");
        let member = added.member().expect("the new member");
        assert!(member.is_learner());
        assert_eq!(member.peer_urls(), std::slice::from_ref(&peer_url));
        assert_eq!(added.member_list().len(), MEMBERS + 1);
        // A new ID is drawn from the peer URLs and the second (etcd's
        // way): in the same second the ID itself is taken, as in etcd.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            status_message(client.member_add([peer_url.as_str()], None).await),
            "etcdserver: Peer URLs already exists"
        );
        assert_eq!(
            status_message(
                client
                    .member_add(
                        ["http://127.0.0.1:1"],
                        Some(MemberAddOptions::new().with_is_learner())
                    )
                    .await
            ),
            "etcdserver: too many learner members in cluster"
        );
        member.id()
    });
    cluster
        .start_joining(joining)
        .unwrap_or_else(|error| panic!("the new member did not start: {error}"));
    let new_endpoint = cluster.members[joining].endpoint();
    runtime.block_on(async {
        let mut client = Client::connect([&new_endpoint], None)
            .await
            .expect("connect");
        let status = client.status().await.expect("status");
        assert_eq!(
            status.header().expect("header").member_id(),
            new_id,
            "the new member took the ID MemberAdd gave it"
        );
        assert!(status.is_learner(), "Status says it is a learner");
        let serializable = || GetOptions::new().with_prefix().with_serializable();
        let caught_up = eventually("the learner catches up", Duration::from_secs(30), || {
            let mut client = client.clone();
            async move {
                let response = client.get("key-", Some(serializable())).await?;
                if response.kvs().len() == 300 {
                    Ok(response)
                } else {
                    Err(etcd_client::Error::InvalidArgs(format!(
                        "{} keys",
                        response.kvs().len()
                    )))
                }
            }
        })
        .await;
        assert_eq!(caught_up.kvs()[299].value(), b"value-299");
        let log = cluster.members[joining]
            .server
            .as_ref()
            .expect("started")
            .output_tail(1 << 20);
        assert!(
            log.contains("installing the leader's snapshot"),
            "the learner caught up without a snapshot:\n{log}"
        );
        let promoted = eventually("the learner is promoted", Duration::from_secs(30), || {
            let mut client = client.clone();
            async move { client.member_promote(new_id).await }
        })
        .await;
        assert!(promoted.members().iter().all(|member| !member.is_learner()));
        let status = client.status().await.expect("status");
        assert!(!status.is_learner(), "a voter now");
        assert_eq!(
            status_message(client.member_promote(new_id).await),
            "etcdserver: can only promote a learner member"
        );
        let named = eventually(
            "every member lists the new one by name",
            Duration::from_secs(20),
            || {
                let endpoint = endpoints[lead].clone();
                async move {
                    let mut client = Client::connect([&endpoint], None).await?;
                    let listed = client.member_list().await?;
                    let named = listed
                        .members()
                        .iter()
                        .any(|member| member.id() == new_id && member.name() == "m3");
                    if named {
                        Ok(listed)
                    } else {
                        Err(etcd_client::Error::InvalidArgs("unnamed".to_owned()))
                    }
                }
            },
        )
        .await;
        assert_eq!(named.members().len(), MEMBERS + 1);
    });
    // Four voters: with an old member down, three make the quorum, and
    // one of them is the new member.
    cluster.kill(follower);
    runtime.block_on(put_eventually(
        &new_endpoint,
        ("after", "joined"),
        Duration::from_secs(20),
    ));
    cluster.restart(follower);
    cluster.kill(joining);
    cluster.restart(joining);
    runtime.block_on(async {
        let mut client = Client::connect([&new_endpoint], None)
            .await
            .expect("connect");
        let after = eventually(
            "the new member after its restart",
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                async move { client.get("after", None).await }
            },
        )
        .await;
        assert_eq!(after.kvs()[0].value(), b"joined");
        let listed = client.member_list().await.expect("member list");
        assert_eq!(listed.members().len(), MEMBERS + 1);
    });
}

/// etcd's MemberRemove, asked of a member that is neither the lead member
/// nor the one removed: the answer lists the two left, the removed member
/// exits (status 0, as a removed etcd member stops) and refuses to start
/// again, a second removal is etcd's "member not found", and the two left
/// keep serving writes, also after both are SIGKILLed and restarted (the
/// membership is durable).
#[test]
fn a_member_removed_through_a_follower_stops_and_stays_out() {
    let mut cluster = Cluster::start();
    let runtime = current_thread_runtime();
    let endpoints = cluster.endpoints();
    let lead = runtime.block_on(settled_lead_member(&endpoints, Duration::from_secs(20)));
    let removed = (lead + 1) % MEMBERS;
    let asked = (lead + 2) % MEMBERS;
    let removed_id = runtime.block_on(member_id_of(&endpoints[removed]));
    runtime.block_on(async {
        let mut client = Client::connect([&endpoints[asked]], None)
            .await
            .expect("connect");
        client.put("before", "1", None).await.expect("put");
        let response = client
            .member_remove(removed_id)
            .await
            .expect("member remove");
        let left: Vec<u64> = response
            .members()
            .iter()
            .map(|member| member.id())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "the answer lists the members left: {left:x?}"
        );
        assert!(!left.contains(&removed_id));
        let listed = client.member_list().await.expect("member list");
        assert_eq!(listed.members().len(), 2);
        let again = client.member_remove(removed_id).await;
        match again {
            Err(etcd_client::Error::GRpcStatus(status)) => {
                assert_eq!(status.message(), "etcdserver: member not found")
            }
            other => panic!("a second removal: {other:?}"),
        }
    });
    let status = cluster.wait_for_exit(removed, Duration::from_secs(10));
    assert!(
        status.success(),
        "a removed member exits with status 0: {status}"
    );
    let member = &cluster.members[removed];
    let arguments = member.arguments(&cluster.initial_cluster, cluster.timing, &cluster.extra);
    let refused = MetastoreServer::start_exact(&arguments, member.client_port, member.metrics_port)
        .err()
        .expect("a removed member must not start again");
    assert!(
        refused.contains("permanently removed from the cluster"),
        "{refused}"
    );
    let others: Vec<usize> = (0..MEMBERS).filter(|index| *index != removed).collect();
    for index in &others {
        cluster.kill(*index);
    }
    // Together: with two voters left, neither is ready until the other
    // is up.
    cluster.start_together(&others);
    let endpoints: Vec<String> = others
        .iter()
        .map(|index| endpoints[*index].clone())
        .collect();
    runtime.block_on(async {
        let mut client = Client::connect(&endpoints, None).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.put("after", "2", None).await {
                Ok(_) => break,
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "no write after the restart: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listed = client.member_list().await.expect("member list");
        assert_eq!(listed.members().len(), 2, "the removal survives restarts");
        let before = client.get("before", None).await.expect("get");
        assert_eq!(before.kvs().len(), 1);
    });
}

/// etcd's MemberUpdate: a member's peer URLs move; restarted on its new
/// URLs (with its old `--initial-cluster`, which counts only at
/// bootstrap) it is reached there: with the third member down, writes
/// need it.
#[test]
fn a_member_whose_peer_urls_moved_is_reached_at_the_new_ones() {
    let mut cluster = Cluster::start();
    let runtime = current_thread_runtime();
    let endpoints = cluster.endpoints();
    let lead = runtime.block_on(settled_lead_member(&endpoints, Duration::from_secs(20)));
    let (moved, third) = ((lead + 1) % MEMBERS, (lead + 2) % MEMBERS);
    let new_port = common::stable_port();
    let new_url = format!("http://127.0.0.1:{new_port}");
    runtime.block_on(async {
        let moved_id = member_id_of(&endpoints[moved]).await;
        let mut client = Client::connect([&endpoints[moved]], None)
            .await
            .expect("connect");
        let taken = cluster.members[third].peer_url();
        assert_eq!(
            status_message(client.member_update(moved_id, [taken]).await),
            "etcdserver: Peer URLs already exists"
        );
        assert_eq!(
            status_message(client.member_update(0x1234, [new_url.clone()]).await),
            "etcdserver: member not found"
        );
        let updated = client
            .member_update(moved_id, [new_url.clone()])
            .await
            .expect("member update");
        let listed = updated
            .members()
            .iter()
            .find(|member| member.id() == moved_id)
            .expect("still a member");
        assert_eq!(listed.peer_urls(), std::slice::from_ref(&new_url));
    });
    cluster.kill(moved);
    cluster.members[moved].peer_port = new_port;
    cluster.restart(moved);
    cluster.kill(third);
    // A write needs the moved member now.
    runtime.block_on(put_eventually(
        &endpoints[moved],
        ("moved", "yes"),
        Duration::from_secs(20),
    ));
    cluster.restart(third);
    runtime.block_on(async {
        let mut client = Client::connect([&endpoints[third]], None)
            .await
            .expect("connect");
        let listed = client.member_list().await.expect("member list");
        assert!(
            listed
                .members()
                .iter()
                .any(|member| member.peer_urls() == std::slice::from_ref(&new_url)),
            "the update is durable"
        );
    });
}

/// Membership changes under client load keep one linearizable history:
/// writers and readers go through every member (the new one too, once it
/// serves) while a learner is added, joins, is promoted, and then the
/// lead member removes itself. The members left hold one history, and the
/// clients' history is linearizable against it.
#[test]
fn membership_changes_under_load_keep_a_linearizable_history() {
    let seed = common::test_seed("membership_changes_under_load_keep_a_linearizable_history");
    let mut cluster = Cluster::start_with_flags(FAST, &["--snapshot-count", "200"]);
    let joining = cluster.new_member("m3");
    let peer_url = cluster.members[joining].peer_url();
    let endpoints = std::sync::Arc::new(cluster.endpoints());
    let shared = Shared::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clients = start_clients(&runtime, &endpoints, &shared, seed);
    std::thread::sleep(Duration::from_secs(2));
    let lead = runtime.block_on(settled_lead_member(&endpoints, Duration::from_secs(20)));
    let asked = endpoints[(lead + 1) % MEMBERS].clone();
    let new_id = runtime.block_on(async {
        let client = Client::connect([&asked], None).await.expect("connect");
        let added = eventually("member add under load", Duration::from_secs(20), || {
            let mut client = client.clone();
            let url = peer_url.clone();
            async move {
                client
                    .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                    .await
            }
        })
        .await;
        added.member().expect("added").id()
    });
    cluster
        .start_joining(joining)
        .unwrap_or_else(|error| panic!("the new member did not start: {error}"));
    runtime.block_on(async {
        let client = Client::connect([&asked], None).await.expect("connect");
        eventually("promotion under load", Duration::from_secs(30), || {
            let mut client = client.clone();
            async move { client.member_promote(new_id).await }
        })
        .await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let after_join = shared.acknowledged();
    let lead = runtime.block_on(settled_lead_member(&endpoints, Duration::from_secs(20)));
    runtime.block_on(async {
        let lead_id = member_id_of(&endpoints[lead]).await;
        let mut client = Client::connect([&endpoints[lead]], None)
            .await
            .expect("connect");
        client
            .member_remove(lead_id)
            .await
            .expect("the lead member removes itself");
    });
    let status = cluster.wait_for_exit(lead, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_secs(3));
    let (writes, reads) = stop_clients(&runtime, clients, &shared);
    assert!(
        shared.acknowledged() > after_join,
        "no write was acknowledged after the lead member left"
    );
    let left: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != lead)
        .map(|(_, endpoint)| endpoint.clone())
        .collect();
    check_histories(&runtime, &left, &writes, &reads);
}

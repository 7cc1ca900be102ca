//! The deadline of each stage of a new connection. A connection that never
//! finishes its handshake, or never sends a request, holds a file
//! descriptor, a task and h2's buffers for nothing; these deadlines close
//! it. The client preface is h2's handshake, timed by `connection`; the
//! first SETTINGS frame and the first complete request header block are
//! followed by `inbound` and timed here. All are measured from accept.

use std::time::{Duration, Instant};

use super::inbound::{InboundSignals, Stage};

/// How long each stage may take, from accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimeouts {
    /// The client preface and the SETTINGS frame that must follow it
    /// (RFC 9113 §3.4). grpc-go's server allows 120 s for its handshake
    /// (`ConnectionTimeout`); a client on the same network needs
    /// milliseconds.
    pub handshake: Duration,
    /// The first complete request header block. A gRPC client dials
    /// before its first call, so this is longer; a client closed by it
    /// dials again when it has a call to make.
    pub first_request: Duration,
}

/// The stage a connection did not reach in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedStage {
    Settings,
    FirstRequest,
}

impl MissedStage {
    /// The GOAWAY error code. A client that sent no SETTINGS also never
    /// acknowledged ours: RFC 9113 §6.5.3 lets an endpoint "issue a
    /// connection error of type SETTINGS_TIMEOUT". A client that merely
    /// has not called yet did nothing wrong: NO_ERROR, like an idle close.
    pub fn reason(self) -> h2::Reason {
        match self {
            MissedStage::Settings => h2::Reason::SETTINGS_TIMEOUT,
            MissedStage::FirstRequest => h2::Reason::NO_ERROR,
        }
    }
}

/// Resolves when the connection misses a stage's deadline; never, once it
/// has sent a whole request header block. The deadlines are kept in time
/// order, whichever timeout is shorter; at either, a connection that has
/// not sent its SETTINGS is reported as missing them.
pub async fn missed_stage(
    signals: &InboundSignals,
    accepted_at: Instant,
    timeouts: StageTimeouts,
) -> MissedStage {
    let mut deadlines = [
        (accepted_at + timeouts.handshake, Stage::FirstRequest),
        (accepted_at + timeouts.first_request, Stage::Established),
    ];
    deadlines.sort_by_key(|(deadline, _)| *deadline);
    for (deadline, reached) in deadlines {
        monoio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
        let stage = signals.stage();
        if stage < reached {
            return if stage < Stage::FirstRequest {
                MissedStage::Settings
            } else {
                MissedStage::FirstRequest
            };
        }
    }
    std::future::pending().await
}

//! `grpc.health.v1.Health`, the standard gRPC health protocol, as etcd
//! registers it: the server as a whole (service name "") is SERVING.
//!
//! The protocol (grpc-proto `doc/health-checking.md`): "If the requested
//! service is unknown, the call will fail with status NOT_FOUND", and a
//! Watch on an unknown service sends SERVICE_UNKNOWN and stays open.

use super::{missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::grpc_health_v1::health_check_response::ServingStatus;
use crate::proto::grpc_health_v1::{HealthCheckRequest, HealthCheckResponse};

/// The service names we report on: the whole server, as etcd does. A
/// server alone always has its leaders, so the status does not change
/// while the process serves; a cluster member reports the same for now
/// (reporting a lost quorum is not built yet).
fn status_of(service: &str) -> Option<ServingStatus> {
    service.is_empty().then_some(ServingStatus::Serving)
}

pub async fn call(
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Check" => {
            unary(requests, responses, async |request: HealthCheckRequest| {
                let status = status_of(&request.service)
                    .ok_or_else(|| Status::not_found("unknown service"))?;
                Ok(HealthCheckResponse {
                    status: status as i32,
                })
            })
            .await
        }
        "Watch" => {
            let request: HealthCheckRequest = requests.unary().await?;
            let status = status_of(&request.service).unwrap_or(ServingStatus::ServiceUnknown);
            responses
                .send(&HealthCheckResponse {
                    status: status as i32,
                })
                .await?;
            // The status never changes while we serve; the stream stays
            // open until the client cancels it.
            responses.client_gone().await;
            Ok(())
        }
        other => Err(missing_method("grpc.health.v1.Health", other, &[])),
    }
}

//! The services' gRPC clients, each call carrying the signed-in person's token.

use crate::Endpoints;
use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient,
    broadcast_tracking_service_client::BroadcastTrackingServiceClient, follow_up_service_client::FollowUpServiceClient,
    lead_service_client::LeadServiceClient, notification_service_client::NotificationServiceClient,
    people_service_client::PeopleServiceClient, qualification_service_client::QualificationServiceClient,
};
use platform::grpc::TracedChannel;
use std::time::Duration;

/// How long a page waits for a service before it says the service is unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Backends {
    pub lead: LeadServiceClient<TracedChannel>,
    pub assignment: AssignmentServiceClient<TracedChannel>,
    pub follow_up: FollowUpServiceClient<TracedChannel>,
    pub broadcast: BroadcastTrackingServiceClient<TracedChannel>,
    pub qualification: QualificationServiceClient<TracedChannel>,
    pub people: PeopleServiceClient<TracedChannel>,
    pub notifications: NotificationServiceClient<TracedChannel>,
}

impl Backends {
    /// Clients of the services at `endpoints`, connecting lazily.
    pub fn connect(settings: &platform::Settings, endpoints: &Endpoints) -> anyhow::Result<Self> {
        let channel = |name: &str, endpoint: &str| {
            platform::grpc::channel_without_credentials(settings, endpoint)
                .map_err(|e| anyhow::anyhow!("console: the {name} endpoint {endpoint}: {e}"))
        };
        Ok(Self {
            lead: LeadServiceClient::new(channel("lead", &endpoints.lead)?),
            assignment: AssignmentServiceClient::new(channel("assignment", &endpoints.assignment)?),
            follow_up: FollowUpServiceClient::new(channel("follow-up", &endpoints.follow_up)?),
            broadcast: BroadcastTrackingServiceClient::new(channel("broadcast", &endpoints.broadcast)?),
            qualification: QualificationServiceClient::new(channel("qualification", &endpoints.qualification)?),
            people: PeopleServiceClient::new(channel("people", &endpoints.people)?),
            notifications: NotificationServiceClient::new(channel("notifications", &endpoints.notifications)?),
        })
    }
}

/// A request carrying `token` as its bearer, bounded in time.
pub fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = authorized_stream(token, message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// A streaming request carrying `token`: it lasts as long as its answer streams (a watch, an
/// export), so it has no deadline of its own.
pub fn authorized_stream<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A request of someone not yet signed in.
pub fn anonymous<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

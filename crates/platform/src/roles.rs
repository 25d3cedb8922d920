//! Which role may call which RPC: the one table the auth layer enforces before a call reaches
//! its service, and docs/security.md prints. What a role may do *within* an RPC (an agent's
//! leads, an organisation's data) is the service's to decide, from the token's claims.

use crate::auth::Role;

const ADMIN: Role = Role::Admin;
const OPERATOR: Role = Role::Operator;
const AGENT: Role = Role::Agent;
const SERVICE: Role = Role::Service;
const INTEGRATION: Role = Role::Integration;

/// People who work leads, and the platform's services on their behalf.
const DESK: &[Role] = &[ADMIN, OPERATOR, AGENT, SERVICE];
/// People who run the desk (every lead, bulk, export), and the services.
const RUNS_THE_DESK: &[Role] = &[ADMIN, OPERATOR, SERVICE];
/// An organisation's settings, people, agents and models.
const ADMINISTERS: &[Role] = &[ADMIN, SERVICE];
/// Only the platform's services, after their own checks.
const INTERNAL: &[Role] = &[SERVICE];

/// Every RPC that takes a token and the roles that may call it. An RPC missing here is
/// refused to every role, so a new RPC is closed until it is given a row.
pub const RPC_ROLES: &[(&str, &[Role])] = &[
    ("/leads.v1.IngestService/Ingest", &[SERVICE, INTEGRATION]),
    ("/leads.v1.IngestService/ListRejections", &[ADMIN, OPERATOR, SERVICE, INTEGRATION]),
    ("/leads.v1.LeadService/GetLead", DESK),
    ("/leads.v1.LeadService/ListLeads", DESK),
    ("/leads.v1.LeadService/ChangeStatus", DESK),
    ("/leads.v1.LeadService/BulkChangeStatus", DESK),
    ("/leads.v1.LeadService/ExportLeads", DESK),
    ("/leads.v1.LeadService/GetLeadHistory", DESK),
    ("/leads.v1.LeadService/WatchLeads", DESK),
    ("/leads.v1.LeadService/AssignLeads", INTERNAL),
    ("/leads.v1.LeadService/OpenFollowUp", INTERNAL),
    ("/leads.v1.LeadService/GetLeadSettings", RUNS_THE_DESK),
    ("/leads.v1.LeadService/UpdateLeadSettings", ADMINISTERS),
    ("/leads.v1.QualificationService/GetQualification", DESK),
    ("/leads.v1.QualificationService/Requalify", RUNS_THE_DESK),
    ("/leads.v1.QualificationService/GetModel", DESK),
    ("/leads.v1.QualificationService/TrainModel", ADMINISTERS),
    ("/leads.v1.AssignmentService/UpsertAgent", ADMINISTERS),
    ("/leads.v1.AssignmentService/ListAgents", DESK),
    ("/leads.v1.AssignmentService/GetAgent", DESK),
    ("/leads.v1.AssignmentService/AssignLead", DESK),
    ("/leads.v1.AssignmentService/BulkAssign", RUNS_THE_DESK),
    ("/leads.v1.AssignmentService/GetAssignmentHistory", DESK),
    ("/leads.v1.AssignmentService/GetAssignmentSettings", RUNS_THE_DESK),
    ("/leads.v1.AssignmentService/UpdateAssignmentSettings", ADMINISTERS),
    // An agent sets its own only (the service checks).
    ("/leads.v1.AssignmentService/SetPresence", &[ADMIN, OPERATOR, AGENT, SERVICE, INTEGRATION]),
    ("/leads.v1.AssignmentService/ListWaitingLeads", RUNS_THE_DESK),
    ("/leads.v1.FollowUpService/CreateFollowUp", DESK),
    ("/leads.v1.FollowUpService/ListFollowUps", DESK),
    ("/leads.v1.FollowUpService/CompleteFollowUp", DESK),
    ("/leads.v1.FollowUpService/CancelFollowUp", DESK),
    ("/leads.v1.FollowUpService/UpdateFollowUp", DESK),
    ("/leads.v1.BroadcastTrackingService/GetBroadcastHistory", DESK),
    ("/leads.v1.BroadcastTrackingService/GetCampaignStats", DESK),
    ("/leads.v1.BroadcastTrackingService/ListCampaigns", DESK),
    ("/leads.v1.PeopleService/AddPerson", &[ADMIN]),
    ("/leads.v1.PeopleService/ListPeople", &[ADMIN]),
    ("/leads.v1.PeopleService/UpdatePerson", &[ADMIN]),
    ("/leads.v1.PeopleService/DeactivatePerson", &[ADMIN]),
    ("/leads.v1.PeopleService/ResetPassword", &[ADMIN]),
    ("/leads.v1.PeopleService/CreateSignInCode", ADMINISTERS),
    ("/leads.v1.PeopleService/SetOidcProvider", &[ADMIN]),
    ("/leads.v1.NotificationService/ListNotifications", DESK),
    ("/leads.v1.NotificationService/MarkNotificationsRead", DESK),
    ("/leads.v1.NotificationService/GetNotificationSettings", RUNS_THE_DESK),
    ("/leads.v1.NotificationService/UpdateNotificationSettings", ADMINISTERS),
    ("/leads.v1.NotificationService/CreateWebhookEndpoint", ADMINISTERS),
    ("/leads.v1.NotificationService/ListWebhookEndpoints", ADMINISTERS),
    ("/leads.v1.NotificationService/UpdateWebhookEndpoint", ADMINISTERS),
    ("/leads.v1.NotificationService/DeleteWebhookEndpoint", ADMINISTERS),
    ("/leads.v1.NotificationService/RotateWebhookSecret", ADMINISTERS),
    ("/leads.v1.NotificationService/ListWebhookAttempts", ADMINISTERS),
    ("/leads.v1.NotificationService/ReplayWebhooks", ADMINISTERS),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", &Role::ALL),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &Role::ALL),
];

/// The roles that may call `path` (`/package.Service/Method`); none for a path the table does
/// not name.
pub fn allowed(path: &str) -> &'static [Role] {
    RPC_ROLES.iter().find(|(rpc, _)| *rpc == path).map_or(&[], |(_, roles)| roles)
}

/// Why `role` may not call `path`, or `None` when it may.
pub fn refusal(path: &str, role: Role) -> Option<String> {
    let roles = allowed(path);
    if roles.contains(&role) {
        return None;
    }
    let method = path.rsplit('/').next().unwrap_or(path);
    Some(if roles.is_empty() {
        format!("{method} is not open to any token")
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        format!("{method} is for {} tokens, not {}", names.join(", "), role.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_the_platform_serves_has_a_row_and_every_row_an_rpc() {
        let known = crate::grpc::known_methods();
        let open = crate::auth::SIGN_IN_PATHS;
        for method in known.iter().filter(|m| !m.starts_with("grpc.health.")) {
            let path = format!("/{method}");
            assert!(
                !allowed(&path).is_empty() || open.contains(&path.as_str()),
                "{path} has no row in RPC_ROLES: give it one (docs/security.md lists the matrix)"
            );
        }
        for (path, _) in RPC_ROLES {
            assert!(known.contains(path.trim_start_matches('/')), "{path} is not served");
        }
    }

    #[test]
    fn refusals_name_the_roles_that_may() {
        assert_eq!(refusal("/leads.v1.LeadService/ListLeads", Role::Agent), None);
        assert_eq!(
            refusal("/leads.v1.IngestService/Ingest", Role::Operator).as_deref(),
            Some("Ingest is for service, integration tokens, not operator")
        );
        assert_eq!(refusal("/leads.v1.Nothing/Here", Role::Service).as_deref(), Some("Here is not open to any token"));
    }
}

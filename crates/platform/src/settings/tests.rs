use super::*;
use std::collections::{BTreeSet, HashMap};

fn from_env(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Settings::layered(None, |key| vars.get(key).cloned())
}

fn field(error: anyhow::Error) -> String {
    error.downcast_ref::<SettingsError>().unwrap_or_else(|| panic!("not a settings error: {error}")).field.clone()
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leads-settings-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

#[test]
fn environment_overrides_and_validation_names_the_field() {
    let mut settings =
        from_env(&[("LEADS_SUBJECT_PREFIX", "t1."), ("LEADS_GRPC_LEAD_PORT", "0")]).expect("valid variables");
    assert_eq!(settings.subject_prefix, "t1.");
    assert_eq!(settings.grpc.port(ServiceName::Lead), 0);
    settings.validate().expect("valid");

    settings.subject_prefix = "no-dot".into();
    let err = settings.validate().expect_err("prefix must end with a dot");
    assert_eq!(err.field, "subject_prefix");

    let err = from_env(&[("LEADS_CONSUMER_BATCH_SIZE", "many")]).expect_err("not a number");
    assert_eq!(field(err), "LEADS_CONSUMER_BATCH_SIZE");

    let mut settings = from_env(&[("LEADS_STREAM_REPLICAS", "3"), ("LEADS_CONSUMER_MAX_ACK_PENDING", "50000")])
        .expect("valid variables");
    assert_eq!((settings.stream_replicas, settings.consumer.max_ack_pending), (3, 50_000));
    settings.validate().expect("valid");
    settings.stream_replicas = 6;
    assert_eq!(settings.validate().expect_err("at most five").field, "stream_replicas");
    settings.stream_replicas = 0;
    assert_eq!(settings.validate().expect_err("at least one").field, "stream_replicas");
}

#[test]
fn an_allowed_network_that_does_not_parse_is_named() {
    let mut settings = from_env(&[("LEADS_PEOPLE_OIDC_ALLOWED_NETWORKS", "127.0.0.0/8,::1")]).expect("valid variables");
    settings.validate().expect("valid networks");
    settings.people.oidc_allowed_networks.push("10.0.0.1/8".into());
    let err = settings.validate().expect_err("host bits set");
    assert_eq!(err.field, "people.oidc_allowed_networks");
    assert!(err.reason.contains("\"10.0.0.1/8\""), "{}", err.reason);
}

#[test]
fn a_variable_that_does_not_fit_its_setting_is_named() {
    for (variable, value, reason) in [
        ("LEADS_GRPC_LEAD_PORT", "70000", "number too large to fit in target type"),
        ("LEADS_CONSUMER_MAX_DELIVER", "-x", "invalid digit found in string"),
        ("LEADS_GRPC_REFLECTION", "yes", "provided string was not `true` or `false`"),
        ("LEADS_QUALIFICATION_RETRAIN_GROWTH", "a tenth", "invalid float literal"),
        ("LEADS_METRICS_ADDR", "nowhere", "invalid socket address syntax"),
        ("LEADS_LEAD_STATEMENT_TIMEOUT_MS", "soon", "invalid digit found in string"),
    ] {
        let error = from_env(&[(variable, value)]).expect_err(variable);
        let error = error.downcast_ref::<SettingsError>().expect("a settings error");
        assert_eq!((error.field.as_str(), error.reason.as_str()), (variable, reason));
    }
}

#[test]
fn the_environment_overrides_the_file_which_overrides_the_defaults() {
    let dir = scratch_dir();
    let file = dir.join("leads.toml");
    std::fs::write(
        &file,
        "otlp_endpoint = \"http://otel:4317\"\nsubject_prefix = \"file.\"\n\
         [consumer]\nbatch_size = 100\nconcurrency = 3\n\
         [database.passwords]\nlead = \"from-file\"\n",
    )
    .expect("settings file");
    let vars = HashMap::from([
        ("LEADS_OTLP_ENDPOINT", ""),
        ("LEADS_CONSUMER_CONCURRENCY", "2"),
        ("LEADS_LEAD_DB_PASSWORD", "from-env"),
    ]);
    let settings = Settings::layered(Some(&file), |key| vars.get(key).map(|v| (*v).to_owned())).expect("layered");
    assert_eq!(settings.otlp_endpoint, None, "an empty variable unsets the file's value");
    assert_eq!(settings.subject_prefix, "file.");
    assert_eq!((settings.consumer.batch_size, settings.consumer.concurrency), (100, 2));
    assert_eq!(settings.consumer.ack_wait_secs, ConsumerSettings::default().ack_wait_secs);
    assert_eq!(settings.database.passwords["lead"].expose_secret(), "from-env");

    std::fs::write(&file, "[consumer]\nbatch_sise = 100\n").expect("settings file");
    let error = Settings::layered(Some(&file), |_| None).expect_err("unknown key");
    assert!(error.to_string().contains("batch_sise"), "{error}");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn otlp_endpoint_falls_back_to_the_standard_variable() {
    let settings = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).expect("valid");
    assert_eq!(settings.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    let settings = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("LEADS_OTLP_ENDPOINT", "http://own:4317"),
    ])
    .expect("valid");
    assert_eq!(settings.otlp_endpoint.as_deref(), Some("http://own:4317"));
}

/// Every variable the settings accepted when each was mapped by hand, with a value unlike
/// its default; `<SERVICE>` stands for each service.
const ACCEPTED: &[(&str, &str)] = &[
    ("LEADS_DATABASE_URL", "postgres://admin:db-secret@db:5432/leads"),
    ("LEADS_ROLE_PASSWORD", "role-secret"),
    ("LEADS_DATABASE_MAX_CONNECTIONS", "17"),
    ("LEADS_NATS_URL", "tls://nats:4222"),
    ("LEADS_SUBJECT_PREFIX", "staging."),
    ("LEADS_OTLP_ENDPOINT", "http://otel:4317"),
    ("LEADS_METRICS_ADDR", "0.0.0.0:9464"),
    ("LEADS_STREAM_REPLICAS", "3"),
    ("LEADS_SHUTDOWN_DEADLINE_SECS", "45"),
    ("LEADS_RETENTION_DAYS", "9"),
    ("LEADS_GRPC_HOST", "0.0.0.0"),
    ("LEADS_GRPC_INGEST_PORT", "61001"),
    ("LEADS_GRPC_LEAD_PORT", "61002"),
    ("LEADS_GRPC_QUALIFICATION_PORT", "61003"),
    ("LEADS_GRPC_ASSIGNMENT_PORT", "61004"),
    ("LEADS_GRPC_FOLLOWUP_PORT", "61005"),
    ("LEADS_GRPC_BROADCAST_PORT", "61006"),
    ("LEADS_GRPC_PEOPLE_PORT", "61007"),
    ("LEADS_GRPC_NOTIFICATIONS_PORT", "61008"),
    ("LEADS_GRPC_TLS_CERT_FILE", "/tls/cert.pem"),
    ("LEADS_GRPC_TLS_KEY_FILE", "/tls/key.pem"),
    ("LEADS_GRPC_TLS_CLIENT_CA_FILE", "/tls/clients.pem"),
    ("LEADS_GRPC_TLS_CA_FILE", "/tls/ca.pem"),
    ("LEADS_GRPC_REFLECTION", "false"),
    ("LEADS_GRPC_REQUEST_TIMEOUT_SECS", "90"),
    ("LEADS_GRPC_CONCURRENCY_PER_CONNECTION", "64"),
    ("LEADS_LEAD_ENDPOINT", "https://lead:50052"),
    ("LEADS_BROADCAST_ENDPOINT", "https://broadcast:50056"),
    ("LEADS_CONSUMER_BATCH_SIZE", "250"),
    ("LEADS_CONSUMER_BROADCAST_BATCH_SIZE", "2500"),
    ("LEADS_CONSUMER_CONCURRENCY", "8"),
    ("LEADS_CONSUMER_ACK_WAIT_SECS", "40"),
    ("LEADS_CONSUMER_MAX_DELIVER", "7"),
    ("LEADS_CONSUMER_RETRY_BASE_MS", "100"),
    ("LEADS_CONSUMER_RETRY_MAX_MS", "9000"),
    ("LEADS_CONSUMER_MAX_ACK_PENDING", "30000"),
    ("LEADS_QUALIFICATION_MIN_LABELS_PER_CLASS", "12"),
    ("LEADS_QUALIFICATION_RETRAIN_INTERVAL_SECS", "120"),
    ("LEADS_QUALIFICATION_LLM_URL", "https://llm/v1/chat/completions"),
    ("LEADS_QUALIFICATION_LLM_MODEL", "small"),
    ("LEADS_QUALIFICATION_LLM_API_KEY", "llm-secret"),
    ("LEADS_QUALIFICATION_LLM_API_KEY_FILE", "/keys/llm"),
    ("LEADS_QUALIFICATION_LLM_TIMEOUT_MS", "2000"),
    ("LEADS_QUALIFICATION_LLM_MAX_PER_SECOND", "5"),
    ("LEADS_PEOPLE_SETUP_CODE_TTL_SECS", "3600"),
    ("LEADS_PEOPLE_SESSION_TTL_SECS", "1800"),
    ("LEADS_PEOPLE_MAX_FAILED_SIGN_INS", "3"),
    ("LEADS_PEOPLE_LOCKOUT_SECS", "60"),
    ("LEADS_PEOPLE_OIDC_ALLOWED_NETWORKS", "10.20.0.0/16, fd00::/8,"),
    ("LEADS_AUTH_KEY_FILES", "/keys/a.pem, /keys/b.pem,"),
    ("LEADS_AUTH_SIGNING_KEY_FILE", "/keys/sign.key"),
    ("LEADS_AUTH_SERVICE_TOKEN_FILE", "/keys/service.jwt"),
    ("LEADS_AUTH_SERVICE_TOKEN_TTL_SECS", "600"),
    ("LEADS_NATS_USER", "leads"),
    ("LEADS_NATS_PASSWORD", "nats-secret"),
    ("LEADS_NATS_PASSWORD_FILE", "/nats/password"),
    ("LEADS_NATS_TOKEN", "nats-token-secret"),
    ("LEADS_NATS_TOKEN_FILE", "/nats/token"),
    ("LEADS_NATS_NKEY_SEED_FILE", "/nats/seed"),
    ("LEADS_NATS_CREDS_FILE", "/nats/leads.creds"),
    ("LEADS_NATS_CA_FILE", "/nats/ca.pem"),
    ("LEADS_NATS_CLIENT_CERT_FILE", "/nats/cert.pem"),
    ("LEADS_NATS_CLIENT_KEY_FILE", "/nats/key.pem"),
    ("LEADS_NATS_REQUIRE_TLS", "true"),
    ("LEADS_DATABASE_MIGRATE_ON_START", "false"),
    ("LEADS_STATEMENT_TIMEOUT_MS", "5000"),
    ("LEADS_<SERVICE>_DATABASE_URL", "postgres://leads_<service>:<service>-url-secret@db/leads"),
    ("LEADS_<SERVICE>_DB_PASSWORD", "<service>-secret"),
    ("LEADS_<SERVICE>_DB_PASSWORD_FILE", "<dir>/<service>.password"),
    ("LEADS_<SERVICE>_STATEMENT_TIMEOUT_MS", "<port>"),
];

/// `ACCEPTED` with each service named, and `<dir>` the directory of the password files.
fn accepted(dir: &Path) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for (name, value) in ACCEPTED {
        let value = value.replace("<dir>", &dir.display().to_string());
        if name.contains("<SERVICE>") {
            for service in ServiceName::ALL {
                let lower = service.as_str();
                vars.insert(
                    name.replace("<SERVICE>", &lower.to_uppercase()),
                    value.replace("<service>", lower).replace("<port>", &service.default_port().to_string()),
                );
            }
        } else {
            vars.insert((*name).to_owned(), value);
        }
    }
    vars
}

#[test]
fn every_accepted_variable_lands_in_its_setting() {
    let dir = scratch_dir();
    for service in ServiceName::ALL {
        std::fs::write(dir.join(format!("{service}.password")), format!("{service}-file-secret\n")).expect("file");
    }
    let vars = accepted(&dir);
    let known: BTreeSet<String> = Settings::variables().into_iter().collect();
    for name in vars.keys() {
        assert!(known.contains(name), "{name} is no longer read");
    }
    let s = Settings::layered(None, |key| vars.get(key).cloned()).expect("valid variables");

    assert_eq!(s.database_url.expose_secret(), "postgres://admin:db-secret@db:5432/leads");
    assert_eq!(s.role_password.as_ref().map(secrecy::ExposeSecret::expose_secret), Some("role-secret"));
    assert_eq!(s.database_max_connections, 17);
    assert_eq!(s.nats_url, "tls://nats:4222");
    assert_eq!(s.subject_prefix, "staging.");
    assert_eq!(s.otlp_endpoint.as_deref(), Some("http://otel:4317"));
    assert_eq!(s.metrics_addr, Some("0.0.0.0:9464".parse().expect("address")));
    assert_eq!((s.stream_replicas, s.shutdown_deadline_secs, s.retention_days), (3, 45, 9));

    let g = &s.grpc;
    assert_eq!(g.host, "0.0.0.0");
    let ports: Vec<u16> = ServiceName::ALL.iter().map(|service| g.port(*service)).collect();
    assert_eq!(ports, [61001, 61002, 61003, 61004, 61005, 61006, 61007, 61008]);
    assert_eq!(g.tls_cert_file.as_deref(), Some(Path::new("/tls/cert.pem")));
    assert_eq!(g.tls_key_file.as_deref(), Some(Path::new("/tls/key.pem")));
    assert_eq!(g.tls_client_ca_file.as_deref(), Some(Path::new("/tls/clients.pem")));
    assert_eq!(g.tls_ca_file.as_deref(), Some(Path::new("/tls/ca.pem")));
    assert_eq!((g.reflection, g.request_timeout_secs, g.concurrency_per_connection), (false, 90, 64));
    assert_eq!(
        (s.endpoints.lead.as_str(), s.endpoints.broadcast.as_str()),
        ("https://lead:50052", "https://broadcast:50056")
    );

    let c = &s.consumer;
    assert_eq!((c.batch_size, c.broadcast_batch_size, c.concurrency, c.ack_wait_secs), (250, 2500, 8, 40));
    assert_eq!((c.max_deliver, c.retry_base_ms, c.retry_max_ms, c.max_ack_pending), (7, 100, 9000, 30_000));

    let q = &s.qualification;
    assert_eq!((q.min_labels_per_class, q.retrain_interval_secs), (12, 120));
    assert_eq!(q.llm_url.as_deref(), Some("https://llm/v1/chat/completions"));
    assert_eq!(q.llm_model, "small");
    assert_eq!(q.llm_api_key.as_ref().map(secrecy::ExposeSecret::expose_secret), Some("llm-secret"));
    assert_eq!(q.llm_api_key_file.as_deref(), Some(Path::new("/keys/llm")));
    assert_eq!((q.llm_timeout_ms, q.llm_max_per_second), (2000, 5));

    let p = &s.people;
    assert_eq!((p.setup_code_ttl_secs, p.session_ttl_secs, p.max_failed_sign_ins, p.lockout_secs), (3600, 1800, 3, 60));
    assert_eq!(p.oidc_allowed_networks, ["10.20.0.0/16", "fd00::/8"]);

    let a = &s.auth;
    assert_eq!(a.key_files, [PathBuf::from("/keys/a.pem"), PathBuf::from("/keys/b.pem")]);
    assert_eq!(a.signing_key_file.as_deref(), Some(Path::new("/keys/sign.key")));
    assert_eq!(a.service_token_file.as_deref(), Some(Path::new("/keys/service.jwt")));
    assert_eq!(a.service_token_ttl_secs, 600);

    let n = &s.nats_auth;
    assert_eq!(n.user.as_deref(), Some("leads"));
    assert_eq!(n.password.as_ref().map(secrecy::ExposeSecret::expose_secret), Some("nats-secret"));
    assert_eq!(n.token.as_ref().map(secrecy::ExposeSecret::expose_secret), Some("nats-token-secret"));
    for (path, expected) in [
        (&n.password_file, "/nats/password"),
        (&n.token_file, "/nats/token"),
        (&n.nkey_seed_file, "/nats/seed"),
        (&n.creds_file, "/nats/leads.creds"),
        (&n.ca_file, "/nats/ca.pem"),
        (&n.client_cert_file, "/nats/cert.pem"),
        (&n.client_key_file, "/nats/key.pem"),
    ] {
        assert_eq!(path.as_deref(), Some(Path::new(expected)));
    }
    assert!(n.require_tls);

    let d = &s.database;
    assert!(!d.migrate_on_start);
    assert_eq!(d.statement_timeout_ms, 5000);
    for service in ServiceName::ALL {
        let name = service.as_str();
        assert_eq!(d.service_urls[name].expose_secret(), format!("postgres://leads_{name}:{name}-url-secret@db/leads"));
        assert_eq!(d.password_files[name], dir.join(format!("{name}.password")));
        // The file wins over the password given directly.
        assert_eq!(d.passwords[name].expose_secret(), format!("{name}-file-secret"));
        assert_eq!(d.statement_timeout_ms(service), u64::from(service.default_port()));
    }

    let without_files: HashMap<String, String> =
        vars.into_iter().filter(|(name, _)| !name.ends_with("_DB_PASSWORD_FILE")).collect();
    let s = Settings::layered(None, |key| without_files.get(key).cloned()).expect("valid variables");
    for service in ServiceName::ALL {
        assert_eq!(s.database.passwords[service.as_str()].expose_secret(), format!("{service}-secret"));
    }
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn debug_output_holds_no_secret() {
    let dir = scratch_dir();
    for service in ServiceName::ALL {
        std::fs::write(dir.join(format!("{service}.password")), format!("{service}-file-secret\n")).expect("file");
    }
    let vars = accepted(&dir);
    let settings = Settings::layered(None, |key| vars.get(key).cloned()).expect("valid variables");
    let printed = format!("{settings:?}");
    assert!(printed.contains("[REDACTED]"), "{printed}");
    let mut secrets = vec!["db-secret".to_owned(), "role-secret".into(), "llm-secret".into(), "nats-secret".into()];
    secrets.push("nats-token-secret".into());
    for service in ServiceName::ALL {
        secrets.extend([
            format!("{service}-url-secret"),
            format!("{service}-secret"),
            format!("{service}-file-secret"),
        ]);
    }
    for secret in secrets {
        assert!(!printed.contains(&secret), "{secret} printed in {printed}");
    }
    // The paths of secret files are not secrets.
    assert!(printed.contains("/keys/llm"), "{printed}");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn each_setting_has_its_own_variable() {
    let variables = Settings::variables();
    let unique: BTreeSet<&String> = variables.iter().collect();
    assert_eq!(unique.len(), variables.len(), "two settings share a variable: {variables:?}");
    assert!(variables.iter().all(|name| name.starts_with("LEADS_")));
}

/// The variables README.md's settings table names, with `<SERVICE>` and `[_FILE]` expanded.
fn readme_variables() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let rows = readme
        .lines()
        .skip_while(|line| !line.starts_with("| variable | default | meaning |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    let mut names = BTreeSet::new();
    for row in rows {
        let first = row.split('|').nth(1).expect("a first column");
        for name in first.split('`').skip(1).step_by(2) {
            let forms = match name.strip_suffix("[_FILE]") {
                Some(bare) => vec![bare.to_owned(), format!("{bare}_FILE")],
                None => vec![name.to_owned()],
            };
            for form in forms {
                if form.contains("<SERVICE>") {
                    names.extend(ServiceName::ALL.map(|s| form.replace("<SERVICE>", &s.as_str().to_uppercase())));
                } else {
                    names.insert(form);
                }
            }
        }
    }
    names
}

#[test]
fn readme_settings_table_lists_exactly_the_settings() {
    let documented = readme_variables();
    assert!(documented.len() > 40, "the table was not found: {documented:?}");
    let known: BTreeSet<String> = Settings::variables().into_iter().collect();
    let undocumented: Vec<&String> = known.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&known).collect();
    assert!(undocumented.is_empty(), "settings missing from README.md's table: {undocumented:?}");
    assert!(unknown.is_empty(), "README.md's table names what is no setting: {unknown:?}");
}

#[test]
fn service_names_round_trip() {
    for service in ServiceName::ALL {
        assert_eq!(service.as_str().parse::<ServiceName>(), Ok(service));
    }
    assert!("billing".parse::<ServiceName>().is_err());
    assert!("leads".parse::<ServiceName>().is_err(), "the binary's name is no service's");
}

#[test]
fn an_empty_per_service_variable_keeps_the_files_entry() {
    let dir = scratch_dir();
    let file = dir.join("leads.toml");
    std::fs::write(
        &file,
        "[database.service_urls]\nlead = \"postgres://leads_lead@db/leads\"\n\
         [database.passwords]\nlead = \"from-file\"\n",
    )
    .expect("settings file");
    let vars = HashMap::from([("LEADS_LEAD_DATABASE_URL", ""), ("LEADS_LEAD_DB_PASSWORD", "")]);
    let settings = Settings::layered(Some(&file), |key| vars.get(key).map(|v| (*v).to_owned())).expect("layered");
    let url = settings.database.service_urls.get("lead").expect("the file's url stays");
    assert_eq!(url.expose_secret(), "postgres://leads_lead@db/leads");
    let password = settings.database.passwords.get("lead").expect("the file's password stays");
    assert_eq!(password.expose_secret(), "from-file");
    let vars = HashMap::from([("LEADS_LEAD_STATEMENT_TIMEOUT_MS", "")]);
    let error = Settings::layered(None, |key| vars.get(key).map(|v| (*v).to_owned())).expect_err("no number");
    assert!(error.to_string().contains("LEADS_LEAD_STATEMENT_TIMEOUT_MS"), "{error}");
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/leads.example.toml");
    let settings = Settings::layered(Some(&path), |_| None).expect("valid file");
    settings.validate().expect("valid settings");
    let defaults = Settings::default();
    assert_eq!(settings.database_url.expose_secret(), defaults.database_url.expose_secret());
    assert_eq!(format!("{settings:?}"), format!("{defaults:?}"));
    assert_eq!(settings.grpc.port(ServiceName::Broadcast), 50056);
}

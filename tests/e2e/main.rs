//! End-to-end tests: they start the real service binaries on free ports, against fresh
//! PostgreSQL databases and SQLite files, and call them over real sockets with the generated
//! clients (and grpcurl), as a user would.

mod bounded_pages;
mod chaos;
mod fake_model;
mod faults;
mod fuzz;
mod helpers;
mod http_json;
mod import;
mod import_fixture;
mod input_text;
mod langflow_support;
mod observability;
mod retention;
mod server_limits;
mod server_reflection;
mod service_identity;
mod storage_schema;
mod storage_upgrade;
mod tls;
mod traces;

mod agents_cache;
mod agents_crud;
mod agents_default_model;
mod agents_execution;
mod agents_execution_faults;
mod agents_execution_group_commit;
mod agents_execution_running_row;
mod agents_from_workflows;
mod agents_health;
mod agents_linkage;
mod agents_models;
mod agents_provisioning;
mod auth_jwks;
mod walker_executions;
mod walker_faults;
mod walker_reviews;
mod walker_schedules;
mod walker_support;
mod walker_watch;
mod workflows_auth;
mod workflows_cache;
mod workflows_crud;
mod workflows_grpcurl;
mod workflows_health;
mod workflows_library;
mod workflows_name_search;
mod workflows_record_executions;
mod workflows_statistics;

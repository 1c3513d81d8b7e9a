//! Ember's process-level tests, in one test binary so the suite links once: real `ember`
//! processes on loopback ports, real clients (psql, pgJDBC, psycopg, SQLAlchemy, ADBC), real
//! files and a local S3 server, answers compared with single-node DataFusion; and the
//! architecture's rules, read from `cargo metadata` and the sources.

mod architecture;
mod catalog_restart;
mod chaos;
mod cli;
mod cluster_managers;
mod cluster_security;
mod common;
mod dbt;
mod delta;
mod fake_kube;
mod flight_sql;
mod fuzz;
mod kubernetes;
mod memory;
mod pg_auth;
mod pg_clients;
mod pg_robustness;
mod s3;
mod slt_server;
mod tpcds;
mod tpch_cluster;
mod web_ui;

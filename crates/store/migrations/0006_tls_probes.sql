-- Probes beyond plain HTTP: https://, tcp://, grpc:// and grpcs:// instances, TLS settings per
-- target, and the certificate each TLS instance last presented.

-- `{"ca_pem", "server_name", "client_cert_file", "client_key_file", "insecure_skip_verify"}`
-- for targets with TLS instances; NULL otherwise. Client keys are paths, never contents.
ALTER TABLE targets ADD COLUMN tls jsonb;
-- The service a gRPC instance is asked about (NULL: the default, "").
ALTER TABLE targets ADD COLUMN grpc_service text;

-- The certificate an instance last presented: the earliest notAfter of its chain and the
-- leaf's SHA-256. Written by the coordinator only when the certificate changes (a renewal is
-- news; the same certificate seen again is not), with a `target.certificate_changed` event.
ALTER TABLE instance_status ADD COLUMN certificate_expires_at timestamptz;
ALTER TABLE instance_status ADD COLUMN certificate_sha256 text;

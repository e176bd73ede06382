"""The commented example of the service configuration (``rcds server example-config``)."""

EXAMPLE = """\
# rcds publishing service configuration (TOML).
# Relative paths are relative to the directory of this file.  Unknown keys are errors.

# Shared repositories tarballs are published into (fully qualified names).  Publishing
# uses the first free repository; lookups search them in this order.
repositories = ["user1.example.org", "user2.example.org"]

# Tarballs go to /cvmfs/<repo>/<prefix>/<cid>, "last used" stamps to <stamp_prefix>/<cid>.
prefix = "sw"
stamp_prefix = "ts"

# Directory for the service's state; state_dir and spool_dir default to repos/ and spool/
# under it.
base_dir = "/var/lib/rcds"
# state_dir = "/var/lib/rcds/repos"    # repository storage
# spool_dir = "/var/lib/rcds/spool"    # received uploads waiting to be published

# Largest accepted upload: bytes, or with a unit (K/M/G/T or KiB..TiB = 1024^n,
# KB..TB = 1000^n).
max_upload_size = "4GiB"
# Largest total size a tarball may expand to (a decompression bomb is refused when it gets there).
max_unpacked_size = "64GiB"

# Deflate library and level of new objects in the repositories (LIBRARY:LEVEL): isal:0-3,
# libdeflate:1-12, zlib:1-9.  Every choice writes ordinary zlib objects; the
# default trades ~12% larger objects than libdeflate:5 for several times less CPU (a faster
# PRESENT).  Changing it applies to new objects only: objects already published stay valid.
compression = "isal:2"

[cleanup]
# Tarballs neither published nor updated for more than maxdays days are deleted.
maxdays = 30
# Local hour at which the first repository is cleaned; the next ones follow hourly.
start_hour = 2

[listen]
host = "0.0.0.0"
port = 8443

# HTTPS.  Without a [tls] table the API is served over plain HTTP (tokens still work, client
# certificates do not).
[tls]
cert_file = "/etc/grid-security/hostcert.pem"
key_file = "/etc/grid-security/hostkey.pem"
# CAs trusted for client certificates and RFC 3820 proxies: a directory of PEM files
# (*.pem, *.0, ...) and/or a PEM bundle.
ca_dir = "/etc/grid-security/certificates"
# ca_file = "/etc/rcds/client-cas.pem"

[auth]
# Client-certificate DNs allowed to use the service, and their account names:
#   "/DC=org/DC=example/O=Example/CN=Alice Smith" alice
grid_mapfile = "/etc/grid-security/grid-mapfile"
# Requests from 127.0.0.1/::1 without credentials are accepted as "localhost" unless this is
# true.  Set it when a reverse proxy on this host forwards outside requests.
require_auth_on_loopback = false

# Trusted bearer-token (WLCG / SciTokens JWT) issuers; repeat the table for each one.
[[auth.token_issuers]]
issuer = "https://cilogon.org/example"
# Public keys: PEM public keys or certificates, or a JWKS JSON file (e.g. refreshed by cron
# from the issuer's jwks_uri).  Files are re-read when they change.
keys = ["/etc/rcds/issuers/cilogon-example.jwks"]
# Accepted "aud" values; "https://wlcg.cern.ch/jwt/v1/any" is always accepted.
audience = ["https://rcds01.example.org"]
# Scope the token must grant ("compute.create" is what today's clients' tokens carry).
scope = "compute.create"

# Who may publish under which CID group (the first component of <group>/<hash>).
# Without an entry, an identity may publish under a group equal to its grid-mapfile account
# or to one of its token groups (wlcg.groups, without the leading "/").  Keys: an account, a
# token group, a full DN, a token identity "<iss>#<sub>", or "*" (any authenticated identity);
# values: CID groups, or "*" (every group).
[acl]
alice = ["dune", "mu2e"]
"dune/production" = ["dune"]
# "*" = ["*"]    # today's behaviour: everyone may publish anywhere

[replica]
# The partner server whose repositories are replicated here, and how often to pull.
partner_url = "https://rcds02.example.org"
pull_interval = 30
# Where the partner serves its repositories, and their master public keys (<fqrn>.pub).
partner_repository_url = "http://rcds02.example.org:8000/cvmfs/@fqrn@"
partner_keys_dir = "/etc/rcds/partner-keys"

# Keep the served trees of new repositories in an S3 bucket (<s3>/<fqrn>) instead of state_dir;
# keys and settings stay in state_dir.  Credentials: the usual AWS environment variables or
# profile, never this file.  Readers then use http://<endpoint>/<bucket>/<prefix>/@fqrn@
# (public-read objects), and [serve] serves only the repositories on local disk.
# [storage]
# s3 = "s3://rcds-repos/stratum0"
# endpoint = "https://s3.example.org"
# acl = "public-read"

[serve]
# Repositories (own and replicas) are served at http://<host>:<port>/cvmfs/<fqrn>/ for clients,
# stratum 1s and proxies.
host = "0.0.0.0"
port = 8000

[notify]
# Revision notifications in the stock CernVM-FS protocol. With broker = true the API listener
# also serves <listen>/notifications/subscribe and /notifications/publish (set clients'
# CVMFS_NOTIFICATION_SERVER and replicas to the API's base URL), and every new revision of the
# own repositories is announced there at once.
broker = true
# Other brokers every new revision is POSTed to as well (e.g. one beside the stratum 1s).
servers = ["http://notify.example.org:4929"]
# Networks that may POST notifications to this broker (others get 403).
allow_publish = ["127.0.0.0/8", "::1/128"]

[stamps]
# Seconds between writes of pending "last used" stamps (each write is one revision per repository).
flush_interval = 10
"""

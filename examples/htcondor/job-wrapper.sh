#!/bin/sh
# HTCondor job wrapper for rcds: wait for the code published at submit time, link it into the
# job's scratch directory, then run the user's command (this script's arguments) there.
#
# Needs in the job environment (see submit.sub):
#   RCDS_CID     the CID printed by `rcds publish` (<group>/<sha256>)
#   RCDS_REPOS   optional: repositories to look in (else asked from $RCDS_SERVERS, or the
#                CernVM-FS client configuration's CVMFS_REPOSITORIES)
#   RCDS_WAIT_OPTS optional: more `rcds wait` options, e.g. "--repo-url URL --key DIR"
# and the `rcds` command on the worker node (set $RCDS to its path if it is not on $PATH).
set -u

: "${RCDS_CID:?RCDS_CID is not set: pass it from the submit file (environment = \"RCDS_CID=...\")}"
: "${_CONDOR_SCRATCH_DIR:=$PWD}"
RCDS=${RCDS:-rcds}

# Looks in /cvmfs/<repo>/sw/$RCDS_CID for every repository (polls 1 s .. 15 s, 10 minutes at most),
# then makes $_CONDOR_SCRATCH_DIR/code a symbolic link to it. On a node without /cvmfs, add
# --repo-url http://HOST/cvmfs/@fqrn@ --key KEYDIR to read the repositories over HTTP instead
# (the code is then copied to $_CONDOR_SCRATCH_DIR/code).
# shellcheck disable=SC2086  # RCDS_WAIT_OPTS is a list of options, split on purpose
if ! RCDS_CODE_PATH=$("$RCDS" wait "$RCDS_CID" --timeout 600 --link "$_CONDOR_SCRATCH_DIR/code" ${RCDS_WAIT_OPTS:-}); then
    echo "job-wrapper: the code $RCDS_CID did not become available; giving up" >&2
    exit 1
fi
export RCDS_CODE_PATH
export RCDS_CODE="$_CONDOR_SCRATCH_DIR/code"
# The names jobsub jobs use for the same thing, so existing job scripts keep working.
export INPUT_TAR_DIR_LOCAL="$RCDS_CODE"

echo "job-wrapper: code $RCDS_CID at $RCDS_CODE_PATH, linked as $RCDS_CODE" >&2
cd "$_CONDOR_SCRATCH_DIR" || exit 1
if [ $# -eq 0 ]; then
    echo "job-wrapper: no command given; pass it as the job's arguments" >&2
    exit 2
fi
exec "$@"

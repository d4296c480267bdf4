#!/usr/bin/env bash
# Installs the real SMTP peers the interop tests talk to, from Debian's
# packages: swaks, Postfix (smtp-source, smtp-sink, and a relay instance)
# and dnsmasq (MX records on loopback), HAProxy (PROXY protocol v2 in
# front of two relays, tests/haproxy.rs), openssl (test certificates and
# `openssl s_client -starttls smtp`), Net::SSLeay (swaks --tls), Cyrus
# SASL (saslpasswd2 and the sasldb/PLAIN/LOGIN plugins: a Postfix
# smarthost that requires AUTH), msmtp (a mail client of the submission
# listeners), Prometheus (promtool, and a server that scrapes --metrics),
# socat and postfix-policyd-spf-python (the policy-service tests), nginx
# (the MTA-STS policy host, tests/mta_sts.rs, tests/tls_reports.rs), python3-dkim and
# python3-authres (the DKIM and authentication-results tests), OpenDKIM
# and rspamd (the milter tests), Knot DNS and ldnsutils (a DNSSEC-signed
# zone on loopback, tests/dane.rs). Safe to run again.
set -euo pipefail
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
{ command -v smtp-source >/dev/null 2>&1 || [ -x /usr/sbin/smtp-source ]; } || need+=(postfix)
{ command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; } || need+=(dnsmasq-base)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || need+=(haproxy)
command -v msmtp >/dev/null 2>&1 || need+=(msmtp)
command -v bsd-mailx >/dev/null 2>&1 || need+=(bsd-mailx)
command -v s-nail >/dev/null 2>&1 || need+=(s-nail)
[ -x /usr/lib/git-core/git-send-email ] || need+=(git-email)
# promtool (check metrics) and a Prometheus server scraping --metrics
# (tests/metrics.rs): Debian's prometheus, a 22 MB download, 332 MB
# installed (with its web UI), installed here in well under a minute
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# swaks --tls needs Net::SSLeay, only a Recommends of swaks
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)
{ command -v saslpasswd2 >/dev/null 2>&1 || [ -x /usr/sbin/saslpasswd2 ]; } || need+=(sasl2-bin)
ls /usr/lib/*/sasl2/libsasldb.so >/dev/null 2>&1 || need+=(libsasl2-modules)
# the policy-service tests: the real SPF policy server, served on a
# socket by socat
command -v socat >/dev/null 2>&1 || need+=(socat)
[ -x /usr/bin/policyd-spf ] || need+=(postfix-policyd-spf-python)
# python3's email, gzip and json modules take TLS reports apart
# (tests/tls_reports.rs, with dnsmasq and nginx as above)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# DKIM verifiers (tests/dkim.rs): dkimpy (Ed25519 through PyNaCl) and OpenDKIM
/usr/bin/python3 -c 'import dkim' >/dev/null 2>&1 || need+=(python3-dkim)
/usr/bin/python3 -c 'import nacl' >/dev/null 2>&1 || need+=(python3-nacl)
command -v opendkim-testmsg >/dev/null 2>&1 || need+=(opendkim-tools)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# README "Install" run as written (tests/install.rs): the unit checked by
# systemd-analyze verify (from Debian's systemd; no systemd is started),
# the man page read by man
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v man >/dev/null 2>&1 || need+=(man-db)
# the MTA-STS tests serve the policy over HTTPS with nginx (run as a
# single process on a temp config; Debian's service is not started)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || need+=(nginx)
# the DANE tests: Knot DNS serves zones signed by ldns-signzone (run as a
# single process on a temp config; Debian's service is not started)
{ command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ]; } || need+=(knot)
command -v ldns-signzone >/dev/null 2>&1 || need+=(ldnsutils)
# python3-authres parses our RFC 8601 headers (tests/auth_results.rs)
/usr/bin/python3 -c 'import authres' >/dev/null 2>&1 || need+=(python3-authres)
# the milter tests (tests/milter.rs): OpenDKIM in signing mode as a real
# milter (opendkim-genkey for its key), verified by dkimpy above; rspamd's
# milter proxy (self_scan: no Redis, no normal worker)
[ -x /usr/sbin/opendkim ] || need+=(opendkim)
[ -x /usr/sbin/opendkim-genkey ] || need+=(opendkim-tools)
[ -x /usr/bin/rspamd ] || need+=(rspamd)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks no questions and starts no service of its own here.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

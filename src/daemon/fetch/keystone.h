/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <systemd/sd-event.h>

#include "curl-easy.h"
#include "curl-loop.h"
#include "util.h"

/* The daemon's own Keystone credentials ([Upstream] Auth=keystone): a token from
 * POST {AuthURL}/v3/auth/tokens, refreshed before it expires, and the image endpoint from its catalog.
 *
 *   keystone.c         the pure part: the credentials file, the request body, the token response
 *   keystone-client.c  the request on the CurlLoop and the refresh timer
 *
 * No token, password or secret is ever part of a message. */

/* CredentialsFile=: "key = value" lines, '#' comments, the names of clouds.yaml's auth fields. Either
 * application_credential_id + application_credential_secret (recommended), or username + password +
 * project_name (user_domain_name and project_domain_name default to "Default"). */
typedef struct KeystoneCredentials {
        char *application_credential_id;
        char *application_credential_secret;
        char *username;
        char *password;
        char *user_domain_name;
        char *project_name;
        char *project_domain_name;
} KeystoneCredentials;

void keystone_credentials_done(KeystoneCredentials *c); /* wipes the secrets */
/* Parses the text of a credentials file. -EINVAL with *ret_error naming the line or what is missing. */
int keystone_credentials_parse(const char *text, KeystoneCredentials *ret, char **ret_error);
/* Reads path, refusing a file that anyone but its owner may read or write. *ret_error names the file. */
int keystone_credentials_load(const char *path, KeystoneCredentials *ret, char **ret_error);
/* The JSON body of POST /v3/auth/tokens; wipe it (explicit_bzero) before freeing. */
int keystone_auth_request_body(const KeystoneCredentials *c, char **ret);

/* What a token response says. */
typedef struct KeystoneTokenInfo {
        usec_t lifetime;      /* expires_at - issued_at (both the server's clock); 0 when not given */
        char *image_url;      /* the catalog's image endpoint for interface and region; NULL when none */
} KeystoneTokenInfo;

void keystone_token_info_done(KeystoneTokenInfo *i);
/* Parses the body of a 201 to POST /v3/auth/tokens. region NULL: any. -EBADMSG with *ret_reason (static)
 * for a body that is no token. */
int keystone_token_parse(const char *json, size_t size, const char *interface, const char *region,
                         KeystoneTokenInfo *ret, const char **ret_reason);
/* "2026-12-02T10:20:31.000000Z" (Keystone's ISO 8601, UTC) → µs since the epoch. */
int keystone_parse_time(const char *s, usec_t *ret);
/* When to ask for the next token, counted from receipt: at 90% of the lifetime, never sooner than a
 * second. */
usec_t keystone_refresh_delay(usec_t lifetime);

/* ---- the client ---- */

typedef struct Keystone Keystone;

typedef struct KeystoneOptions {
        const char *auth_url;          /* AuthURL=, without /v3/auth/tokens */
        const char *credentials_file;  /* for messages */
        const KeystoneCredentials *credentials; /* copied */
        const char *interface;         /* "public", "internal", "admin" */
        const char *region;            /* NULL: any */
        const TransportSettings *transport; /* the Fetcher's: borrowed, read at each request */
} KeystoneOptions;

/* A request ended: error 0 (keystone_token() is the new token) or -errno with message (names Keystone
 * and what it answered, never a secret). refresh_due: the token is at its refresh time. */
typedef struct KeystoneCallbacks {
        void (*done)(Keystone *k, int error, const char *message, void *userdata);
        void (*refresh_due)(Keystone *k, void *userdata);
        void *userdata;
} KeystoneCallbacks;

int keystone_new(sd_event *event, CurlLoop *loop, const KeystoneOptions *o, const KeystoneCallbacks *cb,
                 Keystone **ret);
Keystone *keystone_free(Keystone *k);
/* Asks for a new token unless a request is out already. done follows, from the loop. */
int keystone_authenticate(Keystone *k);
/* The token, while not past its refresh time; else NULL. */
const char *keystone_token(const Keystone *k);
const char *keystone_image_url(const Keystone *k); /* from the last catalog; NULL when none */
const char *keystone_interface(const Keystone *k);
const char *keystone_region(const Keystone *k);     /* NULL: any */

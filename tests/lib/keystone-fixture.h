/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* A Keystone for tests: libmicrohttpd on 127.0.0.1 answering POST /v3/auth/tokens. It knows one
 * application credential and one user (with password and project), issues tokens "ks-token-<n>" with a
 * configurable lifetime (expires_at in the response; the fixture's own clock decides validity), puts an
 * image endpoint into the catalog, answers 401 to wrong credentials, and counts token requests.
 *
 *   KeystoneFixture *ks;
 *   assert(keystone_fixture_new(&ks) == 0);
 *   keystone_fixture_set_image_url(ks, "http://127.0.0.1:PORT");
 *   ... upstream_fixture_set_token_validator(fx, keystone_fixture_token_valid, ks) ...
 *   keystone_fixture_free(ks);
 *
 * Counters are kept under a lock; the test thread may read them at any time. */

typedef struct KeystoneFixture KeystoneFixture;

#define KEYSTONE_FIXTURE_APP_ID "app-cred-id"
#define KEYSTONE_FIXTURE_APP_SECRET "app-cred-secret"
#define KEYSTONE_FIXTURE_USER "glance-svc"
#define KEYSTONE_FIXTURE_PASSWORD "glance-password"
#define KEYSTONE_FIXTURE_PROJECT "service"

int keystone_fixture_new(KeystoneFixture **ret);
void keystone_fixture_free(KeystoneFixture *ks);
/* "http://127.0.0.1:<port>"; free() it. */
char *keystone_fixture_url(const KeystoneFixture *ks);
/* Lifetime of the tokens issued from now on (default 3600 s). */
void keystone_fixture_set_lifetime_ms(KeystoneFixture *ks, unsigned ms);
/* The public image endpoint of the catalog, in region "RegionOne" (NULL: no image service). */
void keystone_fixture_set_image_url(KeystoneFixture *ks, const char *url);
/* Token requests received (right or wrong credentials), and tokens issued. */
unsigned keystone_fixture_token_requests(KeystoneFixture *ks);
unsigned keystone_fixture_tokens_issued(KeystoneFixture *ks);
/* Whether token was issued by ks and has not expired; a void *userdata form for the upstream fixture. */
bool keystone_fixture_token_valid(const char *token, void *ks);
/* Makes every token issued so far invalid (as a revocation or a Keystone restart would). */
void keystone_fixture_revoke_all(KeystoneFixture *ks);

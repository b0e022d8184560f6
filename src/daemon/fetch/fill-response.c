/* SPDX-License-Identifier: MIT */

/* What a response means for a fill: follow it, start over, take its body, or abort it (fill_abort(): the
 * fill moves to ABORTING with a message that names the image). Only memory is touched here (it runs
 * inside curl's callbacks). */

#include <inttypes.h>
#include <stdio.h>
#include <strings.h>

#include "fill-internal.h"
#include "log.h"

/* A peer at its FanOut= names another node: followed only to a node of the fleet that this fill was not
 * pointed away from or failed by, and at most FLEET_MAX_HOPS times; anything else counts as that peer
 * failing, so the fill goes on as it would without a fan-out. */
static ResponseVerdict judge_peer_redirect(Fill *f, const FillResponse *r) {
        Fleet *fleet = f->fetcher->fleet;
        const char *to = r->peer_redirect;

        if (!fleet || !fleet_is_peer(fleet, to) || streq(to, fill_peer(f)) || fleet_nodes_contain(f->via, to)) {
                fill_abort(f, -EPROTO, "Peer %s pointed %s at %s, which is not a node to ask", fill_peer(f), f->id, to);
                return VERDICT_ERROR;
        }
        if (f->hops >= FLEET_MAX_HOPS) {
                fill_abort(f, -EPROTO, "Peers pointed %s on %u times", f->id, f->hops);
                return VERDICT_ERROR;
        }
        free(f->next_peer);
        f->next_peer = strdup(to);
        if (!f->next_peer) {
                fill_abort(f, -ENOMEM, "Out of memory");
                return VERDICT_ERROR;
        }
        return VERDICT_PEER;
}

static ResponseVerdict judge_redirect(Fill *f, const FillResponse *r) {
        if (r->peer_redirect && fill_from_peer(f))
                return judge_peer_redirect(f, r);
        if (!r->location) {
                fill_abort(f, -EPROTO, "Upstream answered %ld without a Location for %s", r->status, f->id);
                return VERDICT_ERROR;
        }
        if (f->redirects >= FETCH_MAX_REDIRECTS) {
                fill_abort(f, -EPROTO, "Too many redirects fetching %s", f->id);
                return VERDICT_ERROR;
        }
        if (strncasecmp(r->location, "http://", 7) != 0 && strncasecmp(r->location, "https://", 8) != 0) {
                _cleanup_(freep) char *shown = url_redact_userinfo(r->location);
                fill_abort(f, -EPROTO, "Upstream redirected %s to a refused protocol: %s", f->id, strempty(shown));
                return VERDICT_ERROR;
        }
        return VERDICT_REDIRECT;
}

/* Statuses that end the fill, or NULL-equivalent VERDICT_BODY when the status is one we take. */
static ResponseVerdict judge_status(Fill *f, const FillResponse *r) {
        /* For messages, which reach the journal and D-Bus callers: never the URL's credentials. */
        _cleanup_(freep) char *shown = url_redact_userinfo(r->effective_url);
        long status = r->status;

        if (status == 404 || status == 410)
                fill_abort(f, -ENOENT, "Upstream has no image %s (HTTP %ld from %s)", f->id, status, strempty(shown));
        else if (status == 401 && f->send_token && fetcher_may_reauthenticate(f->fetcher) && !f->reauthenticated) {
                /* Perhaps the token was rotated or expired: the end of this response gets another. */
                free(f->refusal);
                if (asprintf(&f->refusal, "Upstream refused access to %s (HTTP %ld from %s); check %s",
                             f->id, status, strempty(shown), fetcher_credentials_hint(f->fetcher)) < 0)
                        f->refusal = NULL;
                return VERDICT_REAUTH;
        } else if ((status == 401 || status == 403) && fill_from_peer(f))
                fill_abort(f, -EPROTO, "Peer %s refused access to %s (HTTP %ld); check PeerTokenFile=",
                               fill_peer(f), f->id, status);
        else if (status == 401 || status == 403)
                fill_abort(f, -EPROTO, "Upstream refused access to %s (HTTP %ld from %s); check %s",
                               f->id, status, strempty(shown), fetcher_credentials_hint(f->fetcher));
        else if (status == 416 && f->phase == PHASE_IMAGE && f->resume_offset > 0)
                return VERDICT_RESTART;
        else if (status != 200 && !(status == 206 && f->phase == PHASE_IMAGE))
                fill_abort(f, -EPROTO, "Upstream answered HTTP %ld for %s (%s)", status, f->id, strempty(shown));
        else
                return VERDICT_BODY;
        return VERDICT_ERROR;
}

/* The image's length and where the body starts in it, from a 200 or a matching 206. */
static int fill_image_extent(Fill *f, const FillResponse *r, uint64_t *ret_offset, uint64_t *ret_total) {
        uint64_t cl = r->content_length, start, total;

        if (r->status != 206) {
                *ret_offset = 0;
                *ret_total = cl;
                return 0;
        }
        /* Only the continuation we asked for, of the same representation, may be spliced on. */
        if (f->resume_offset == 0 || upstream_parse_content_range(r->content_range, &start, NULL, &total) < 0 ||
            start != f->resume_offset || (r->etag && !f->switched && !streq_ptr(r->etag, f->resume_etag)))
                return -ESTALE;
        *ret_offset = start;
        *ret_total = total != UINT64_MAX ? total : cl != UINT64_MAX ? start + cl : UINT64_MAX;
        return 0;
}

ResponseVerdict fill_judge_response(Fill *f, const FillResponse *r) {
        uint64_t offset, total;

        if (r->status >= 300 && r->status < 400)
                return judge_redirect(f, r);
        ResponseVerdict v = judge_status(f, r);
        if (v != VERDICT_BODY || f->phase == PHASE_RECORD)
                return v;

        if (fill_image_extent(f, r, &offset, &total) < 0)
                return VERDICT_RESTART;
        if (f->has_record && f->record.has_size) {
                if (total != UINT64_MAX && total != f->record.size) {
                        fill_abort(f, -EBADMSG, "Upstream sends %" PRIu64 " bytes of %s, its record says %" PRIu64,
                                       total, f->id, f->record.size);
                        return VERDICT_ERROR;
                }
                total = f->record.size;
        }
        f->body_offset = offset;
        f->bytes_total = total;
        return VERDICT_BODY;
}

/* Expected digest: the caller's; else the strongest of what the response and the Glance record say
 * (sha512 > sha256 > md5; the response wins a tie). On a 206, Content-MD5 describes the partial body
 * (RFC 2616 14.15), so only Digest/Repr-Digest count there. */
void fill_choose_expected(Fill *f, const FillResponse *r) {
        Checksum best = {}, c;
        bool have = false;

        if (f->has_caller_expected) {
                f->expected = f->caller_expected;
                f->has_expected = true;
                return;
        }

        if (r->repr_digest && checksum_from_digest_header(r->repr_digest, &c) >= 0) {
                best = c;
                have = true;
        }
        if (r->digest && checksum_from_digest_header(r->digest, &c) >= 0 && (!have || c.algo > best.algo)) {
                best = c;
                have = true;
        }
        if (r->status != 206 && r->content_md5 && checksum_from_content_md5(r->content_md5, &c) >= 0 && !have) {
                best = c;
                have = true;
        }
        if (f->has_record && f->record.has_checksum && (!have || f->record.checksum.algo > best.algo)) {
                best = f->record.checksum;
                have = true;
        }
        f->has_expected = have;
        if (have)
                f->expected = best;
}

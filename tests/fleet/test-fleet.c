/* SPDX-License-Identifier: MIT */
/* Rendezvous hashing of the fleet (src/daemon/fleet.c): the same ranking everywhere, an even share per
 * node, and a new node taking only its own share. */

#include <glib.h>
#include <stdio.h>

#include "fleet.h"

#define N_IDS 20000

static char *id_of(unsigned i) {
        return g_strdup_printf("%08x-1111-4222-8333-%012u", i * 2654435761u, i);
}

static size_t owner(char *const *nodes, size_t n, const char *id) {
        size_t order[8];
        g_assert_cmpuint(n, <=, G_N_ELEMENTS(order));
        fleet_rank(nodes, n, id, order);
        return order[0];
}

static void test_rank_is_a_permutation(void) {
        char *nodes[] = { "http://10.0.0.1:9393", "http://10.0.0.2:9393", "http://10.0.0.3:9393", "http://10.0.0.4:9393" };
        size_t order[4], again[4];

        for (unsigned i = 0; i < 100; i++) {
                g_autofree char *id = id_of(i);
                gboolean seen[4] = {};
                fleet_rank(nodes, 4, id, order);
                fleet_rank(nodes, 4, id, again);
                for (size_t k = 0; k < 4; k++) {
                        g_assert_cmpuint(order[k], <, 4);
                        g_assert_false(seen[order[k]]);
                        seen[order[k]] = TRUE;
                        g_assert_cmpuint(order[k], ==, again[k]);
                        if (k > 0)
                                g_assert_cmpuint(fleet_weight(nodes[order[k - 1]], id), >=, fleet_weight(nodes[order[k]], id));
                }
        }
}

/* The order of the list does not matter: every node computes the same owner from its own list. */
static void test_rank_ignores_list_order(void) {
        char *a[] = { "http://10.0.0.1:9393", "http://10.0.0.2:9393", "http://10.0.0.3:9393" };
        char *b[] = { "http://10.0.0.3:9393", "http://10.0.0.1:9393", "http://10.0.0.2:9393" };

        for (unsigned i = 0; i < 1000; i++) {
                g_autofree char *id = id_of(i);
                g_assert_cmpstr(a[owner(a, 3, id)], ==, b[owner(b, 3, id)]);
        }
}

static void test_shares_are_even(void) {
        char *nodes[] = { "http://10.0.0.1:9393", "http://10.0.0.2:9393", "http://10.0.0.3:9393" };
        unsigned count[3] = {};

        for (unsigned i = 0; i < N_IDS; i++) {
                g_autofree char *id = id_of(i);
                count[owner(nodes, 3, id)]++;
        }
        for (size_t k = 0; k < 3; k++) {
                g_test_message("%s owns %u of %u", nodes[k], count[k], N_IDS);
                g_assert_cmpuint(count[k], >, N_IDS * 30 / 100);
                g_assert_cmpuint(count[k], <, N_IDS * 37 / 100);
        }
}

/* A fourth node takes about a quarter of the owners, all of them for itself: none moves between the
 * three that were there. */
static void test_fourth_node_moves_a_quarter(void) {
        char *three[] = { "http://10.0.0.1:9393", "http://10.0.0.2:9393", "http://10.0.0.3:9393" };
        char *four[] = { "http://10.0.0.1:9393", "http://10.0.0.2:9393", "http://10.0.0.3:9393", "http://10.0.0.4:9393" };
        unsigned moved = 0;

        for (unsigned i = 0; i < N_IDS; i++) {
                g_autofree char *id = id_of(i);
                size_t before = owner(three, 3, id), after = owner(four, 4, id);
                if (before != after) {
                        g_assert_cmpuint(after, ==, 3);
                        moved++;
                }
        }
        g_test_message("adding a fourth node moved %u of %u owners (%.1f%%)", moved, N_IDS, 100.0 * moved / N_IDS);
        g_assert_cmpuint(moved, >, N_IDS * 22 / 100);
        g_assert_cmpuint(moved, <, N_IDS * 28 / 100);
}

/* FanOut=2: two askers are served; the next are pointed at the receivers in turn, the least pointed first
 * (the older on a tie), never at the asker itself or at a node in its Via; with every receiver excluded the
 * asker is refused. A released stream makes room again, and images are counted apart. */
static void test_fanout_admit(void) {
        FleetFanout *t = fleet_fanout_new(2);
        FanoutStream *a = NULL, *b = NULL, *s = NULL;
        const char *node = NULL;
        char *via_a[] = { "A", NULL }, *via_ab[] = { "A", "B", NULL };

        g_assert_cmpint(fleet_fanout_admit(t, "img", "A", NULL, &a, &node), ==, FANOUT_SERVE);
        g_assert_cmpint(fleet_fanout_admit(t, "img", "B", NULL, &b, &node), ==, FANOUT_SERVE);
        g_assert_cmpuint(fleet_fanout_streams(t, "img"), ==, 2);

        g_assert_cmpint(fleet_fanout_admit(t, "img", "C", NULL, &s, &node), ==, FANOUT_REDIRECT);
        g_assert_cmpstr(node, ==, "A");
        g_assert_cmpint(fleet_fanout_admit(t, "img", "D", NULL, &s, &node), ==, FANOUT_REDIRECT);
        g_assert_cmpstr(node, ==, "B");
        g_assert_cmpint(fleet_fanout_admit(t, "img", "E", via_a, &s, &node), ==, FANOUT_REDIRECT);
        g_assert_cmpstr(node, ==, "B");
        g_assert_cmpint(fleet_fanout_admit(t, "img", "B", via_a, &s, &node), ==, FANOUT_REFUSE);
        g_assert_cmpint(fleet_fanout_admit(t, "img", "F", via_ab, &s, &node), ==, FANOUT_REFUSE);

        /* Another image has streams of its own. */
        g_assert_cmpint(fleet_fanout_admit(t, "other", "C", NULL, &s, &node), ==, FANOUT_SERVE);
        fleet_fanout_release(t, s);
        g_assert_cmpuint(fleet_fanout_streams(t, "other"), ==, 0);

        fleet_fanout_release(t, a);
        g_assert_cmpint(fleet_fanout_admit(t, "img", "C", NULL, &a, &node), ==, FANOUT_SERVE);
        const FanoutStats *st = fleet_fanout_stats(t);
        g_assert_cmpuint(st->streams_peak, ==, 2);
        g_assert_cmpuint(st->redirects_given, ==, 3);
        g_assert_cmpuint(st->refused, ==, 2);
        fleet_fanout_release(t, a);
        fleet_fanout_release(t, b);
        g_assert_cmpuint(fleet_fanout_streams(t, "img"), ==, 0);
        fleet_fanout_free(t);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/fleet/rank/permutation", test_rank_is_a_permutation);
        g_test_add_func("/fleet/rank/list-order", test_rank_ignores_list_order);
        g_test_add_func("/fleet/rank/even-shares", test_shares_are_even);
        g_test_add_func("/fleet/rank/fourth-node-moves-a-quarter", test_fourth_node_moves_a_quarter);
        g_test_add_func("/fleet/fanout/admit", test_fanout_admit);
        return g_test_run();
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* The fleet verb: the nodes of the fleet ([Fleet]), or which of them hold given images. */

#include "imgcachectl.h"

int verb_fleet(int argc, char *argv[], Context *c);

// All differentiable ops in one include.
#pragma once

#include "hpdl/ops/activation.h"
#include "hpdl/ops/attention.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/checkpoint.h"
#include "hpdl/ops/conv.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/embedding.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/loss.h"
#include "hpdl/ops/norm.h"
#include "hpdl/ops/pool.h"
#include "hpdl/ops/reduce.h"
#include "hpdl/ops/rnn.h"
#include "hpdl/ops/shape.h"

/*
 * CPU check of getOutputShapes of libevad_plugins.so's plugins, without TensorRT's builder: an
 * expression builder of its own (apiv::VExprBuilder and apiv::VDimensionExpr of NvInferImpl.h,
 * the implementations behind IExprBuilder and IDimensionExpr) hands each plugin the dimension
 * expressions of its inputs, with the batch size a symbol, and evaluates the expressions the
 * plugin returns at several batch sizes. Like TensorRT's builder it folds an operation on two
 * constants into a constant, so a dimension that does not depend on the batch size comes back
 * constant. Built and run by tests/test_plugin_shapes.py, which writes the plugin nodes of an
 * ONNX export to stdin and compares what this prints with the ONNX shapes.
 *
 * Usage: outputShapesTest libevad_plugins.so <batch>... < nodes
 * stdin, one plugin node per line (the ONNX node's attributes, kind i: INT32 field, f: FLOAT32):
 *   <node> <op> <nbFields> (<field> <i|f> <value>)... <nbInputs> (<rank> (<a> <b>)...)...
 * where each input dimension is a * batch + b (a = 0: a constant).
 * stdout: "PASS/FAIL <what>" for the builder's own checks, then per node
 *   NODE <node> rc <getOutputShapes' return> outputs <getNbOutputs>
 *   OUT <node> <index> <nbDims> <dim>...     (one per output, when rc is 0)
 * with <dim> = c<value> for a constant expression, else e<value at each batch, comma-separated>;
 * and "FAIL <node> <what>" for anything else wrong (a plugin not created, a dimension left unset
 * or not made by this builder, a size tensor, a division by zero). Exit code: number of FAILs.
 */
#include "NvInferRuntime.h"
#include "loadCreators.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

void fail(std::string const& what)
{
    std::printf("FAIL %s\n", what.c_str());
    ++gFailures;
}

void check(bool ok, std::string const& what)
{
    if (ok)
    {
        std::printf("PASS %s\n", what.c_str());
    }
    else
    {
        fail(what);
    }
}

//! x op y as TensorRT defines DimensionOperation; false for a division by zero.
bool apply(DimensionOperation op, int64_t x, int64_t y, int64_t& out)
{
    switch (op)
    {
    case DimensionOperation::kSUM: out = x + y; return true;
    case DimensionOperation::kPROD: out = x * y; return true;
    case DimensionOperation::kMAX: out = x > y ? x : y; return true;
    case DimensionOperation::kMIN: out = x < y ? x : y; return true;
    case DimensionOperation::kSUB: out = x - y; return true;
    case DimensionOperation::kEQUAL: out = x == y ? 1 : 0; return true;
    case DimensionOperation::kLESS: out = x < y ? 1 : 0; return true;
    case DimensionOperation::kFLOOR_DIV:
    case DimensionOperation::kCEIL_DIV:
    {
        if (y == 0)
        {
            return false;
        }
        // C++ truncates toward zero: step away from zero when the quotient is inexact.
        out = x / y;
        bool const exact = x % y == 0;
        bool const negative = (x < 0) != (y < 0);
        if (!exact && op == DimensionOperation::kFLOOR_DIV && negative)
        {
            --out;
        }
        if (!exact && op == DimensionOperation::kCEIL_DIV && !negative)
        {
            ++out;
        }
        return true;
    }
    }
    return false;
}

//! One dimension expression: a constant, the batch symbol, or an operation on two expressions.
class Expr : public apiv::VDimensionExpr
{
public:
    //! What plugins see: IDimensionExpr over this implementation.
    class Handle : public IDimensionExpr
    {
    public:
        explicit Handle(Expr* expr)
        {
            mImpl = expr;
        }
        Expr const& expr() const
        {
            return *static_cast<Expr const*>(mImpl);
        }
    };

    Expr(int64_t value, bool symbol, DimensionOperation op = DimensionOperation::kSUM, Expr const* first = nullptr,
        Expr const* second = nullptr)
        : mValue(value)
        , mSymbol(symbol)
        , mOp(op)
        , mFirst(first)
        , mSecond(second)
    {
    }

    bool isConstant() const override
    {
        return !mSymbol && mFirst == nullptr;
    }
    int64_t getConstantValue() const override
    {
        return isConstant() ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

    //! The value at batch size `batch`; false where a division by zero makes it undefined.
    bool evaluate(int64_t batch, int64_t& out) const
    {
        if (mSymbol)
        {
            out = batch;
            return true;
        }
        if (mFirst == nullptr)
        {
            out = mValue;
            return true;
        }
        int64_t x = 0;
        int64_t y = 0;
        return mFirst->evaluate(batch, x) && mSecond->evaluate(batch, y) && apply(mOp, x, y, out);
    }

    IDimensionExpr const* handle() const
    {
        return &mHandle;
    }

private:
    int64_t mValue;
    bool mSymbol;
    DimensionOperation mOp;
    Expr const* mFirst;
    Expr const* mSecond;
    Handle mHandle{this};
};

//! Our expression behind an IDimensionExpr, or nullptr when this builder did not make it.
Expr const* ours(IDimensionExpr const* e)
{
    auto const* h = dynamic_cast<Expr::Handle const*>(e);
    return h == nullptr ? nullptr : &h->expr();
}

//! The builder a plugin gets (builder()); owns every expression it makes.
class Builder : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return make(value, false);
    }

    IDimensionExpr const* operation(
        DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) override
    {
        Expr const* x = ours(&first);
        Expr const* y = ours(&second);
        if (x == nullptr || y == nullptr)
        {
            fail("an operation on an expression this builder did not make");
            return nullptr;
        }
        if (x->isConstant() && y->isConstant())
        {
            int64_t v = 0;
            if (!apply(op, x->getConstantValue(), y->getConstantValue(), v))
            {
                fail("a constant division by zero");
                return nullptr;
            }
            return make(v, false);
        }
        mExprs.push_back(std::make_unique<Expr>(0, false, op, x, y));
        return mExprs.back()->handle();
    }

    IDimensionExpr const* declareSizeTensor(
        int32_t outputIndex, IDimensionExpr const& /*opt*/, IDimensionExpr const& /*upper*/) override
    {
        // Neither plugin has data-dependent output shapes: a size tensor is an error here.
        fail("declareSizeTensor for output " + std::to_string(outputIndex));
        return nullptr;
    }

    IDimensionExpr const* batch()
    {
        return make(0, true);
    }

    IExprBuilder& builder()
    {
        return mFace;
    }

private:
    class Face : public IExprBuilder
    {
    public:
        explicit Face(apiv::VExprBuilder* impl)
        {
            mImpl = impl;
        }
    };

    IDimensionExpr const* make(int64_t value, bool symbol)
    {
        mExprs.push_back(std::make_unique<Expr>(value, symbol));
        return mExprs.back()->handle();
    }

    std::vector<std::unique_ptr<Expr>> mExprs;
    Face mFace{this};
};

//! The builder's arithmetic and folding, against values worked out by hand.
void checkBuilder()
{
    struct Case
    {
        DimensionOperation op;
        int64_t x, y, want;
    };
    std::vector<Case> const cases = {{DimensionOperation::kSUM, 7, 2, 9}, {DimensionOperation::kPROD, 7, 2, 14},
        {DimensionOperation::kMAX, 7, 2, 7}, {DimensionOperation::kMIN, 7, 2, 2}, {DimensionOperation::kSUB, 2, 7, -5},
        {DimensionOperation::kEQUAL, 7, 7, 1}, {DimensionOperation::kEQUAL, 7, 2, 0},
        {DimensionOperation::kLESS, 2, 7, 1}, {DimensionOperation::kLESS, 7, 7, 0},
        {DimensionOperation::kFLOOR_DIV, 7, 2, 3}, {DimensionOperation::kFLOOR_DIV, -7, 2, -4},
        {DimensionOperation::kFLOOR_DIV, 6, 3, 2}, {DimensionOperation::kCEIL_DIV, 7, 2, 4},
        {DimensionOperation::kCEIL_DIV, -7, 2, -3}, {DimensionOperation::kCEIL_DIV, 6, 3, 2},
        {DimensionOperation::kCEIL_DIV, 32256, 10, 3226}};
    Builder b;
    IExprBuilder& eb = b.builder();
    for (Case const& c : cases)
    {
        std::string const what = "builder op " + std::to_string(static_cast<int32_t>(c.op)) + " on "
            + std::to_string(c.x) + ", " + std::to_string(c.y) + " = " + std::to_string(c.want);
        IDimensionExpr const* folded = eb.operation(c.op, *eb.constant(c.x), *eb.constant(c.y));
        check(folded != nullptr && folded->isConstant() && folded->getConstantValue() == c.want, what + " (folded)");
        // the same with x the batch symbol, evaluated at batch = x
        IDimensionExpr const* symbolic = eb.operation(c.op, *b.batch(), *eb.constant(c.y));
        int64_t v = 0;
        check(symbolic != nullptr && !symbolic->isConstant() && ours(symbolic)->evaluate(c.x, v) && v == c.want,
            what + " (symbolic)");
    }
    int64_t v = 0;
    IDimensionExpr const* byZero = eb.operation(DimensionOperation::kCEIL_DIV, *b.batch(), *eb.constant(0));
    check(byZero != nullptr && !ours(byZero)->evaluate(3, v), "builder: a division by zero has no value");
}

//! Reads one node line and checks that plugin's getOutputShapes; prints its NODE and OUT lines.
void runNode(std::string const& line, std::vector<IPluginCreatorV3One*> const& creators,
    std::vector<int64_t> const& batches)
{
    std::istringstream in(line);
    std::string node;
    std::string op;
    int32_t nbFields = 0;
    in >> node >> op >> nbFields;
    // Fields as TensorRT's ONNX parser passes attributes: INT as kINT32, FLOAT as kFLOAT32.
    std::vector<std::string> names(nbFields > 0 ? nbFields : 0);
    std::vector<int32_t> ints(names.size());
    std::vector<float> floats(names.size());
    std::vector<PluginField> fields;
    for (size_t i = 0; i < names.size(); ++i)
    {
        std::string kind;
        double value = 0.0;
        in >> names[i] >> kind >> value;
        if (kind != "i" && kind != "f")
        {
            in.setstate(std::ios::failbit);
        }
        ints[i] = static_cast<int32_t>(value);
        floats[i] = static_cast<float>(value);
        bool const isInt = kind == "i";
        fields.emplace_back(names[i].c_str(), isInt ? static_cast<void const*>(&ints[i]) : &floats[i],
            isInt ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32, 1);
    }
    Builder b;
    IDimensionExpr const* batch = b.batch();
    int32_t nbInputs = 0;
    in >> nbInputs;
    std::vector<DimsExprs> inputs(nbInputs > 0 ? nbInputs : 0);
    for (DimsExprs& dims : inputs)
    {
        in >> dims.nbDims;
        if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
        {
            in.setstate(std::ios::failbit);
            break;
        }
        for (int32_t d = 0; d < dims.nbDims; ++d)
        {
            int64_t a = 0;
            int64_t c = 0;
            in >> a >> c;
            IDimensionExpr const* e = b.constant(c);
            if (a != 0)
            {
                IDimensionExpr const* scaled
                    = a == 1 ? batch : b.operation(DimensionOperation::kPROD, *b.constant(a), *batch);
                e = c == 0 ? scaled : b.operation(DimensionOperation::kSUM, *scaled, *e);
            }
            dims.d[d] = e;
        }
    }
    if (in.fail() || nbFields < 0 || nbInputs < 0)
    {
        fail(node + " unreadable node line: " + line);
        return;
    }

    IPluginCreatorV3One* creator = nullptr;
    for (IPluginCreatorV3One* c : creators)
    {
        creator = std::strcmp(c->getPluginName(), op.c_str()) == 0 ? c : creator;
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator == nullptr ? nullptr : creator->createPlugin(node.c_str(), &fc, TensorRTPhase::kBUILD);
    if (plugin == nullptr)
    {
        fail(node + " no " + op + " plugin from these fields");
        return;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    int32_t const nbOutputs = build->getNbOutputs();
    std::vector<DimsExprs> outputs(nbOutputs > 0 ? nbOutputs : 0);
    for (DimsExprs& o : outputs)
    {
        o.nbDims = -1; // unset: the plugin must write every output
        for (auto& d : o.d)
        {
            d = nullptr;
        }
    }
    int32_t const rc = build->getOutputShapes(
        inputs.data(), nbInputs, nullptr, 0, outputs.data(), nbOutputs, b.builder());
    std::printf("NODE %s rc %d outputs %d\n", node.c_str(), rc, nbOutputs);
    for (int32_t o = 0; rc == 0 && o < nbOutputs; ++o)
    {
        DimsExprs const& dims = outputs[o];
        if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
        {
            fail(node + " output " + std::to_string(o) + " has no valid rank: " + std::to_string(dims.nbDims));
            continue;
        }
        std::string text = "OUT " + node + " " + std::to_string(o) + " " + std::to_string(dims.nbDims);
        for (int32_t d = 0; d < dims.nbDims; ++d)
        {
            Expr const* e = ours(dims.d[d]);
            std::string const where = node + " output " + std::to_string(o) + " dim " + std::to_string(d);
            if (e == nullptr)
            {
                fail(where + " is not an expression of this builder");
                text += " ?";
                continue;
            }
            if (dims.d[d]->isSizeTensor())
            {
                fail(where + " is a size tensor");
            }
            if (e->isConstant())
            {
                text += " c" + std::to_string(e->getConstantValue());
                continue;
            }
            text += " e";
            for (size_t i = 0; i < batches.size(); ++i)
            {
                int64_t v = 0;
                if (!e->evaluate(batches[i], v))
                {
                    fail(where + " divides by zero at batch " + std::to_string(batches[i]));
                }
                text += (i ? "," : "") + std::to_string(v);
            }
        }
        std::printf("%s\n", text.c_str());
    }
    delete plugin;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc < 3)
    {
        std::fprintf(stderr, "usage: %s libevad_plugins.so <batch>... < nodes\n", argv[0]);
        return 100;
    }
    int32_t n = 0;
    IPluginCreatorInterface* const* all = evad::test::loadCreators(argv[1], n);
    if (all == nullptr)
    {
        return 101;
    }
    std::vector<int64_t> batches;
    for (int i = 2; i < argc; ++i)
    {
        batches.push_back(std::stoll(argv[i]));
    }
    checkBuilder();
    std::vector<IPluginCreatorV3One*> creators;
    for (int32_t i = 0; i < n; ++i)
    {
        creators.push_back(static_cast<IPluginCreatorV3One*>(all[i]));
    }
    std::string line;
    while (std::getline(std::cin, line))
    {
        if (!line.empty())
        {
            runNode(line, creators, batches);
        }
    }
    std::printf("%d failure(s)\n", gFailures);
    return gFailures;
}

// The API's 422 answers name each bad field ({field, reason, type}, reason in English, from
// the validation library or the domain); here they read in Chinese, per field, so a form
// shows each next to the field it names.

const number = (reason) => (String(reason || '').match(/-?\d+(\.\d+)?/) || [''])[0]

const byType = {
  missing: () => '此项必填',
  string_too_short: (r) => (number(r) === '1' ? '不能为空' : `至少 ${number(r)} 个字`),
  string_too_long: (r) => `不能超过 ${number(r)} 个字`,
  too_short: (r) => `至少填写 ${number(r)} 项`,
  too_long: (r) => `最多填写 ${number(r)} 项`,
  extra_forbidden: () => '不支持此项',
  enum: () => '取值无效，请从选项中选择',
  literal_error: () => '取值无效，请从选项中选择',
  url_parsing: () => '网址格式不正确（应以 http:// 或 https:// 开头）',
  url_scheme: () => '网址须以 http:// 或 https:// 开头',
  url_type: () => '网址格式不正确',
  url_too_long: () => '网址过长',
  datetime_parsing: () => '时间格式不正确',
  datetime_type: () => '时间格式不正确',
  datetime_from_date_parsing: () => '时间格式不正确',
  timezone_aware: () => '时间须带时区',
  datetime_future: () => '时间不能晚于现在',
  int_parsing: () => '须为整数',
  int_type: () => '须为整数',
  int_from_float: () => '须为整数',
  greater_than_equal: (r) => `不能小于 ${number(r)}`,
  greater_than: (r) => `须大于 ${number(r)}`,
  less_than_equal: (r) => `不能大于 ${number(r)}`,
  less_than: (r) => `须小于 ${number(r)}`,
  too_large: (r) => `不能大于 ${number(r)}`,
  string_type: () => '须为文字',
  bool_parsing: () => '须为是或否',
  unknown_unit: () => '单位不在通讯录中',
  json_invalid: () => '内容格式不正确',
}

// One field's reason, in Chinese: known kinds by their type, a reason already in Chinese
// as it came, anything else as "填写有误" with the original kept for the support desk.
export function reasonZh(detail) {
  const make = byType[detail?.type]
  if (make) return make(detail.reason)
  const reason = String(detail?.reason || '')
  if (/[\u4e00-\u9fff]/.test(reason)) return reason
  return reason ? `填写有误（${reason}）` : '填写有误'
}

// {field: reason in Chinese} of an ApiError (or {}), keyed by the API's field path
// (e.g. `title`, `reach.views`, `facts.0.label`).
export function fieldErrors(error) {
  return { ...(error?.fields || {}) }
}

// The error of one field of a form, or of anything under it (`facts.0.value` for `facts`).
export function errorOf(errors, field) {
  if (errors[field]) return errors[field]
  const under = Object.keys(errors).find((k) => k.startsWith(field + '.'))
  return under ? errors[under] : ''
}

// What staff call the fields the API names (the whole message of a 422 lists them).
const names = {
  title: '标题', body: '正文', kind: '类型', facts: '数据口径', label: '名称', value: '数值',
  outlets: '发布渠道', outlet: '发布渠道', url: '网址', comment: '意见', reason: '理由',
  reference: '文号或备注', fulfilled_at: '报送时间', level: '级别', category: '类别',
  source_type: '来源类型', source_name: '来源名称', media_tier: '媒体层级', excerpt: '摘要',
  author: '作者', published_at: '发布时间', observed_at: '发现时间', reach: '传播量',
  views: '浏览', reposts: '转发', comments: '评论', likes: '点赞', unit_ids: '涉及单位',
  cause: '起因', handling: '处置经过', lessons: '经验教训', attachments: '附件',
  acknowledge_fact_changes: '数据变更确认',
}
export function fieldName(path) {
  return String(path || '')
    .split('.')
    .map((p) => (/^\d+$/.test(p) ? `第${Number(p) + 1}项` : names[p] || p))
    .join('·')
}

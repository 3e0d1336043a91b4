// Every call to the API: the session cookie goes along, what changes something carries the
// CSRF header, and every error becomes one clear Chinese message (ApiError.message).
import { ElMessage } from 'element-plus'
import { reasonZh, fieldName } from './fields.js'

let onExpired = () => {}
export function whenSessionExpires(handler) {
  onExpired = handler
}

// How an error message names roles; session.js gives it the catalogue's names.
export const naming = { role: (r) => r, field: fieldName }

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message)
    this.status = status
    this.body = body
    this.fields = {}
    for (const d of (body?.error?.details instanceof Array ? body.error.details : [])) {
      if (d && d.field) this.fields[d.field] = reasonZh(d)
    }
  }
}

function cookie(name) {
  const hit = document.cookie.split('; ').find((c) => c.startsWith(name + '='))
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : ''
}

// Server time minus this browser's time, from the API's own `as_of`: countdowns use it.
export const clock = { offset: 0 }
export const serverNow = () => Date.now() + clock.offset

export function explain(status, body, what) {
  const error = body?.error || {}
  const code = error.code || ''
  const details = error.details || {}
  if (status === 0) return `${what}失败：无法连接服务器，请检查网络后重试。已提交的数据没有丢失。`
  if (status === 401 && code === 'bad_credentials') return '用户名或密码不正确。'
  if (status === 401) return '登录已过期，请重新登录。'
  if (status === 429 && code === 'account_locked') {
    const until = details.locked_until ? new Date(details.locked_until).toLocaleTimeString('zh-CN') : ''
    return `密码连续输错次数过多，账户已暂时锁定${until ? `，请于 ${until} 后再试` : ''}。`
  }
  if (status === 403 && details.csrf) return `${what}未执行：安全校验失败，请刷新页面后重试。`
  if (status === 403) {
    const wanted = String(details.roles || '').split(',').map((r) => r.trim()).filter(Boolean)
    const roles = wanted.length ? `（需要以下角色之一：${wanted.map(naming.role).join('、')}）` : ''
    return `${what}未执行：您没有权限${roles}。如需办理，请联系有权限的同事或管理员。`
  }
  if (status === 404) return `${what}失败：未找到该记录，或您无权查看。`
  if (status === 409) return `${what}未执行：与当前状态冲突（${error.message || '记录已变化'}）。请刷新后查看最新情况。`
  if (status === 422) {
    const fields = (Array.isArray(details) ? details : []).map((d) => `${naming.field(d.field)}：${reasonZh(d)}`)
    return `${what}未执行：填写有误${fields.length ? '（' + fields.join('；') + '）' : ''}。`
  }
  if (status >= 500) return `${what}失败：服务暂时不可用（HTTP ${status}）。已保存的数据没有丢失，请稍后重试。`
  return `${what}失败（HTTP ${status}）：${error.message || '未知错误'}`
}

export async function api(method, path, { body, what = '操作', quiet401 = false, headers: extra = {} } = {}) {
  const headers = { Accept: 'application/json', ...extra }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (!['GET', 'HEAD'].includes(method)) headers['X-CSRF-Token'] = cookie('yuqing_csrf')
  let response
  const sent = Date.now()
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch {
    throw new ApiError(explain(0, null, what), 0, null)
  }
  let data = null
  const text = await response.text()
  try {
    data = text ? JSON.parse(text) : null
  } catch {
    data = null
  }
  if (!response.ok) {
    const error = new ApiError(explain(response.status, data, what), response.status, data)
    if (response.status === 401 && !quiet401 && path !== '/auth/v1/login') onExpired(error.message)
    throw error
  }
  if (data && data.as_of) {
    const mid = (sent + Date.now()) / 2
    clock.offset = new Date(data.as_of).getTime() - mid
  }
  return data
}

// For actions: the message shown as a toast, and the error handed back for the form.
export async function act(method, path, options) {
  try {
    return await api(method, path, options)
  } catch (error) {
    ElMessage({ type: 'error', message: error.message, duration: 8000, showClose: true })
    throw error
  }
}

// Every page of a list the API pages by `next_cursor` (null on the last page): the named
// lists of each page joined in order, as one answer of the first page's shape.
export async function everyPage(path, lists, options) {
  const joined = Object.fromEntries(lists.map((name) => [name, []]))
  let cursor = null
  do {
    const query = cursor ? `${path.includes('?') ? '&' : '?'}cursor=${encodeURIComponent(cursor)}` : ''
    const page = await api('GET', path + query, options)
    for (const name of lists) joined[name].push(...page[name])
    cursor = page.next_cursor
  } while (cursor)
  return joined
}
